// defines: a CUDA injection library that writes every kernel, memcpy and memset of a run with its
// GPU start and end, and every CUDA runtime and driver call with its host start and end (CUPTI's activity
// records), for dev/bench/timeline.py. The kernel profile (kernel_profile.py) replays each launch
// alone: it says what a kernel costs, not what the step waits for. This says which stream ran
// what when, so overlap and idle gaps show, and how far ahead of the GPU the host queues work.
//
//   make dev/bench/libcupti_trace.so
//   CUDA_INJECTION64_PATH=$PWD/dev/bench/libcupti_trace.so CUPTI_TRACE_OUT=trace.tsv ./train_gpt2_fp4 ...
//
// Output: one line a record, tab-separated: kind (K kernel, C memcpy, S memset, R runtime call, D
// driver call: the libraries launch through the driver), start and end (ns, CUPTI's timestamps:
// one clock for host and GPU), stream id (R, D: the thread's), correlation id (a launch's call and
// its kernel share it), name (kernels: mangled; c++filt or timeline.py demangles).
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <cupti.h>

#define BUF_BYTES (8u << 20)
static FILE *out;

#define CUPTI_CHECK(call) do { CUptiResult r_ = (call); if (r_ != CUPTI_SUCCESS) { \
    const char *s_; cuptiGetResultString(r_, &s_); fprintf(stderr, "cupti_trace: %s: %s\n", #call, s_); exit(1); } } while (0)

static void CUPTIAPI buffer_requested(uint8_t **buf, size_t *size, size_t *max_records) {
    *buf = aligned_alloc(8, BUF_BYTES);
    if (!*buf) { fprintf(stderr, "cupti_trace: out of memory\n"); exit(1); }
    *size = BUF_BYTES;
    *max_records = 0;
}

static void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream, uint8_t *buf, size_t size, size_t valid) {
    (void)ctx; (void)stream; (void)size;
    CUpti_Activity *rec = NULL;
    while (cuptiActivityGetNextRecord(buf, valid, &rec) == CUPTI_SUCCESS) {
        if (rec->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) {
            const CUpti_ActivityKernel10 *k = (const CUpti_ActivityKernel10 *)rec;
            fprintf(out, "K\t%llu\t%llu\t%u\t%u\t%s\n", (unsigned long long)k->start, (unsigned long long)k->end, k->streamId,
                    k->correlationId, k->name);
        } else if (rec->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
            const CUpti_ActivityMemcpy6 *c = (const CUpti_ActivityMemcpy6 *)rec;
            fprintf(out, "C\t%llu\t%llu\t%u\t%u\tmemcpy kind %u, %llu bytes\n", (unsigned long long)c->start,
                    (unsigned long long)c->end, c->streamId, c->correlationId, c->copyKind, (unsigned long long)c->bytes);
        } else if (rec->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
            const CUpti_ActivityMemset4 *s = (const CUpti_ActivityMemset4 *)rec;
            fprintf(out, "S\t%llu\t%llu\t%u\t%u\tmemset %llu bytes\n", (unsigned long long)s->start, (unsigned long long)s->end,
                    s->streamId, s->correlationId, (unsigned long long)s->bytes);
        } else if (rec->kind == CUPTI_ACTIVITY_KIND_RUNTIME || rec->kind == CUPTI_ACTIVITY_KIND_DRIVER) {
            const CUpti_ActivityAPI *r = (const CUpti_ActivityAPI *)rec;
            int rt = rec->kind == CUPTI_ACTIVITY_KIND_RUNTIME;
            const char *name = "?";
            cuptiGetCallbackName(rt ? CUPTI_CB_DOMAIN_RUNTIME_API : CUPTI_CB_DOMAIN_DRIVER_API, r->cbid, &name);
            fprintf(out, "%c\t%llu\t%llu\t%u\t%u\t%s\n", rt ? 'R' : 'D', (unsigned long long)r->start, (unsigned long long)r->end,
                    r->threadId, r->correlationId, name);
        }
    }
    size_t dropped = 0;
    if (cuptiActivityGetNumDroppedRecords(ctx, stream, &dropped) == CUPTI_SUCCESS && dropped)
        fprintf(stderr, "cupti_trace: %zu records dropped\n", dropped);
    free(buf);
}

static void flush_at_exit(void) {
    cuptiActivityFlushAll(1);
    fclose(out);
}

// the CUDA driver calls this when CUDA_INJECTION64_PATH names this library, as the program starts CUDA
int InitializeInjection(void) {
    const char *path = getenv("CUPTI_TRACE_OUT");
    out = fopen(path ? path : "cupti_trace.tsv", "w");
    if (!out) { fprintf(stderr, "cupti_trace: cannot write %s\n", path ? path : "cupti_trace.tsv"); exit(1); }
    CUPTI_CHECK(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed));
    CUPTI_CHECK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL));
    CUPTI_CHECK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY));
    CUPTI_CHECK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET));
    CUPTI_CHECK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_RUNTIME));
    CUPTI_CHECK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_DRIVER));
    atexit(flush_at_exit);
    return 1;
}
