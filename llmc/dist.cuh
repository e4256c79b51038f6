// defines: Dist, dist_init, dist_free, dist_sync, dist_mean, dist_grads_begin, dist_grads_mean,
//          dist_grads_end, dist_grads_join, dist_all_gather, dist_check_replicas
// Data parallelism over processes, one GPU each. Who this process is (rank, world size, which
// GPU), NCCL for the collectives, and a watchdog: every host wait on the GPU goes through
// dist_sync, which ends the whole job with one line when a rank dies, hangs or NCCL reports an
// error, instead of hanging. Started by MPI (`mpirun`, in a build with USE_MPI), or without it:
// rank and world size from the environment (RANK / WORLD_SIZE / LOCAL_RANK, or Open MPI's or
// MPICH's per-process variables) and NCCL's id from rank 0 over TCP (llmc/rendezvous.h). A build without NCCL
// (USE_NCCL unset) runs one process.
#ifndef LLMC_DIST_CUH
#define LLMC_DIST_CUH

#include <stdint.h>
#include <stdarg.h>
#include "cuda_common.cuh"
#include "rendezvous.h"
#ifdef USE_NCCL
#include <nccl.h>
#endif
#ifdef USE_MPI
#include <mpi.h>
#endif

typedef struct {
    int rank, world, device;
    int mpi;                     // started by MPI
    double timeout_s;            // the longest any rank may wait for the others
    cudaStream_t stream;         // the collectives' stream (gradients overlap the backward on it)
    cudaEvent_t ready, done;     // compute -> communication, communication -> compute
    double *scalar;              // device (world + 1): small reductions, replica hashes
    double *host;                // pinned (world + 1)
#ifdef USE_NCCL
    ncclComm_t comm;
#endif
} Dist;

// the first of the variables in names that is set, or fallback
static int env_int(const char *const *names, int fallback) {
    for (; *names; names++) {
        const char *v = getenv(*names);
        if (v && *v) {
            char *end;
            long x = strtol(v, &end, 10);
            if (*end != '\0' || x < 0 || x > 1 << 20) die("environment variable %s='%s' is not a rank or a size", *names, v);
            return (int)x;
        }
    }
    return fallback;
}

// ends the job: the communicator aborted first so that no kernel is left waiting on a peer; under
// MPI the launcher's other processes go down with it
static void dist_fail(Dist *d, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "error: %s%s\n", error_context, msg);
    fflush(stderr);
#ifdef USE_NCCL
    if (d->comm) ncclCommAbort(d->comm);
#endif
#ifdef USE_MPI
    if (d->mpi) MPI_Abort(MPI_COMM_WORLD, 1);
#endif
    (void)d;
    exit(EXIT_FAILURE);
}

#ifdef USE_NCCL
// an NCCL call's result; the communicator is non-blocking, so a call may still be in progress:
// wait for it, but not past the timeout
static void dist_nccl(Dist *d, ncclResult_t r, const char *what) {
    double deadline = now_seconds() + d->timeout_s;
    while (r == ncclInProgress) {
        if (now_seconds() > deadline) dist_fail(d, "NCCL %s did not complete in %.0f s: a rank died or hangs", what, d->timeout_s);
        usleep(100);
        ncclCommGetAsyncError(d->comm, &r);
    }
    if (r != ncclSuccess) dist_fail(d, "NCCL %s: %s (%s)", what, ncclGetErrorString(r), ncclGetLastError(d->comm));
}
#endif

// waits until stream s is idle: with several ranks, polls it and NCCL's error state, and ends the
// job when nothing moves for timeout_s (d NULL: one process)
static void dist_sync(Dist *d, cudaStream_t s) {
    if (d == NULL || d->world == 1) { CUDA_CHECK(cudaStreamSynchronize(s)); return; }
#ifdef USE_NCCL
    double deadline = now_seconds() + d->timeout_s;
    cudaError_t e;
    for (unsigned n = 1; (e = cudaStreamQuery(s)) == cudaErrorNotReady; n++) {
        if (n % 1024 != 0) continue;
        ncclResult_t r;
        ncclCommGetAsyncError(d->comm, &r);
        if (r != ncclSuccess && r != ncclInProgress) dist_fail(d, "NCCL: %s (%s)", ncclGetErrorString(r), ncclGetLastError(d->comm));
        if (now_seconds() > deadline)
            dist_fail(d, "no progress for %.0f s: another rank died or hangs (--nccl-timeout sets the limit)", d->timeout_s);
    }
    CUDA_CHECK(e);
#endif
}

// init: "HOST:PORT" of rank 0 for a start without MPI (NULL: MASTER_ADDR / MASTER_PORT if set)
static void dist_init(Dist *d, const char *init, double timeout_s) {
    memset(d, 0, sizeof(*d));
    d->timeout_s = timeout_s;
    // only variables a launcher sets per process (SLURM's are also set in a batch script's own
    // shell: scripts/ map them explicitly)
    static const char *const rank_vars[] = { "RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", NULL };
    static const char *const world_vars[] = { "WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", NULL };
    static const char *const local_vars[] = { "LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", NULL };
    d->rank = env_int(rank_vars, 0);
    d->world = env_int(world_vars, 1);
    int local = env_int(local_vars, -1);
#ifdef USE_MPI
    if (getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK")) {  // launched by an MPI launcher
        MPI_Init(NULL, NULL);
        MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
        MPI_Comm_size(MPI_COMM_WORLD, &d->world);
        MPI_Comm node;
        MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
        MPI_Comm_rank(node, &local);
        MPI_Comm_free(&node);
        d->mpi = 1;
    }
#endif
    if (d->world < 1 || d->rank >= d->world) die("rank %d of world size %d: the launcher's variables disagree", d->rank, d->world);
    int ngpu;
    CUDA_CHECK(cudaGetDeviceCount(&ngpu));
    if (local < 0) local = d->rank % ngpu;
    if (local >= ngpu) die("local rank %d, but this node shows %d GPU(s): start at most one process per GPU", local, ngpu);
    d->device = local;
    CUDA_CHECK(cudaSetDevice(d->device));
    if (d->world == 1) return;
    snprintf(error_context, sizeof(error_context), "rank %d: ", d->rank);
#ifndef USE_NCCL
    die("world size %d, but this build has no NCCL: rebuild with NCCL for multi-GPU runs", d->world);
#else
    ncclUniqueId id;
    if (d->rank == 0) dist_nccl(d, ncclGetUniqueId(&id), "unique id");
#ifdef USE_MPI
    if (d->mpi) MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD);
#endif
    if (!d->mpi) {
        char addr[300];
        const char *host = getenv("MASTER_ADDR"), *port = getenv("MASTER_PORT");
        if (init == NULL && host && port) { snprintf(addr, sizeof(addr), "%s:%s", host, port); init = addr; }
        if (init == NULL) die("rank %d of %d: a start without MPI needs --dist-init HOST:PORT (rank 0's address) or MASTER_ADDR and MASTER_PORT", d->rank, d->world);
        rendezvous_tcp(init, d->rank, d->world, &id, sizeof(id), timeout_s);
    }
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    dist_nccl(d, ncclCommInitRankConfig(&d->comm, d->world, id, d->rank, &cfg), "communicator init");
    CUDA_CHECK(cudaStreamCreateWithFlags(&d->stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&d->ready, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&d->done, cudaEventDisableTiming));
    CUDA_CHECK(cudaMalloc(&d->scalar, (d->world + 1) * sizeof(double)));
    CUDA_CHECK(cudaMallocHost(&d->host, (d->world + 1) * sizeof(double)));
#endif
}

static void dist_free(Dist *d) {
#ifdef USE_NCCL
    if (d->world > 1) {
        dist_nccl(d, ncclCommFinalize(d->comm), "finalize");
        ncclCommDestroy(d->comm);
        CUDA_CHECK(cudaFree(d->scalar)); CUDA_CHECK(cudaFreeHost(d->host));
        CUDA_CHECK(cudaEventDestroy(d->ready)); CUDA_CHECK(cudaEventDestroy(d->done));
        CUDA_CHECK(cudaStreamDestroy(d->stream));
    }
#endif
#ifdef USE_MPI
    if (d->mpi) MPI_Finalize();
#endif
}

// the mean of x over the ranks (every rank gets it); also a barrier
static double dist_mean(Dist *d, double x) {
    if (d->world == 1) return x;
#ifdef USE_NCCL
    d->host[0] = x;
    CUDA_CHECK(cudaMemcpyAsync(d->scalar, d->host, sizeof(double), cudaMemcpyHostToDevice, d->stream));
    dist_nccl(d, ncclAllReduce(d->scalar, d->scalar, 1, ncclDouble, ncclSum, d->comm, d->stream), "all-reduce");
    CUDA_CHECK(cudaMemcpyAsync(d->host, d->scalar, sizeof(double), cudaMemcpyDeviceToHost, d->stream));
    dist_sync(d, d->stream);
    x = d->host[0] / d->world;
#endif
    return x;
}

// Gradients, overlapped with the backward: once the compute streams (the backward's and its
// weight gradients') have finished a group of tensors, dist_grads_begin, dist_grads_mean for each,
// dist_grads_end average them in place on the communication stream; dist_grads_join makes the
// compute stream wait for all of it.
static void dist_grads_begin(Dist *d, cudaStream_t compute, cudaStream_t wgrads) {
#ifdef USE_NCCL
    CUDA_CHECK(cudaEventRecord(d->ready, compute));
    CUDA_CHECK(cudaStreamWaitEvent(d->stream, d->ready, 0));
    CUDA_CHECK(cudaEventRecord(d->ready, wgrads));  // the wait above took the event's state of its call
    CUDA_CHECK(cudaStreamWaitEvent(d->stream, d->ready, 0));
    dist_nccl(d, ncclGroupStart(), "group start");
#endif
    (void)d; (void)compute; (void)wgrads;
}

static void dist_grads_mean(Dist *d, float *g, size_t n) {
#ifdef USE_NCCL
    dist_nccl(d, ncclAllReduce(g, g, n, ncclFloat, ncclAvg, d->comm, d->stream), "all-reduce");
#endif
    (void)d; (void)g; (void)n;
}

static void dist_grads_end(Dist *d) {
#ifdef USE_NCCL
    dist_nccl(d, ncclGroupEnd(), "all-reduce");
#endif
    (void)d;
}

static void dist_grads_join(Dist *d, cudaStream_t compute) {
#ifdef USE_NCCL
    CUDA_CHECK(cudaEventRecord(d->done, d->stream));
    CUDA_CHECK(cudaStreamWaitEvent(compute, d->done, 0));
#endif
    (void)d; (void)compute;
}

// buf holds world shards of n elements (BF16 when bytes == 2, FP32 when 4); each rank's own shard
// goes to every rank, in place, on stream s
static void dist_all_gather(Dist *d, void *buf, size_t n, int bytes, cudaStream_t s) {
#ifdef USE_NCCL
    char *own = (char *)buf + (size_t)d->rank * n * bytes;
    dist_nccl(d, ncclAllGather(own, buf, n, bytes == 2 ? ncclBfloat16 : ncclFloat, d->comm, s), "all-gather");
#endif
    (void)d; (void)buf; (void)n; (void)bytes; (void)s;
}

// sum over i of (bits_i + 1) * (odd mix of i), mod 2^32: any single changed element changes it
// (an odd factor is invertible mod 2^32). 8 elements a thread per 16-byte load; n % 8 == 0.
__global__ void replica_hash_kernel(unsigned *out, const uint4 *p, size_t n8) {
    unsigned h = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += (size_t)gridDim.x * blockDim.x) {
        uint4 w = p[i];
        unsigned words[4] = { w.x, w.y, w.z, w.w }, base = (unsigned)(i * 8) * 0x9e3779b1u;
        for (int k = 0; k < 4; k++) {
            h += ((words[k] & 0xffffu) + 1u) * ((base + (2 * k) * 0x9e3779b1u) | 1u);
            h += ((words[k] >> 16) + 1u) * ((base + (2 * k + 1) * 0x9e3779b1u) | 1u);
        }
    }
    for (int o = 16; o > 0; o >>= 1) h += __shfl_xor_sync(0xffffffffu, h, o);
    if (threadIdx.x % 32 == 0) atomicAdd(out, h);  // integer sums: the same in any order
}

// the BF16 weights (n of them, padded to a multiple of 8 with zeros) are bit-identical on every
// rank, or the job ends naming the ranks; returns their hash. Synchronizes stream s.
static unsigned dist_check_replicas(Dist *d, const bf16 *w, size_t n, cudaStream_t s, int step) {
    if (d->world == 1) return 0;
    unsigned *hashes = (unsigned *)d->host;
#ifdef USE_NCCL
    unsigned *dev = (unsigned *)d->scalar;
    CUDA_CHECK(cudaMemsetAsync(dev + d->rank, 0, sizeof(unsigned), s));
    replica_hash_kernel<<<132 * 8, 256, 0, s>>>(dev + d->rank, (const uint4 *)w, n / 8);
    CUDA_CHECK(cudaGetLastError());
    dist_nccl(d, ncclAllGather(dev + d->rank, dev, 1, ncclUint32, d->comm, s), "all-gather");
    CUDA_CHECK(cudaMemcpyAsync(hashes, dev, d->world * sizeof(unsigned), cudaMemcpyDeviceToHost, s));
    dist_sync(d, s);
    for (int r = 1; r < d->world; r++) {
        if (hashes[r] != hashes[0])
            dist_fail(d, "weights differ between ranks after step %d (rank 0 %08x, rank %d %08x)", step, hashes[0], r, hashes[r]);
    }
#endif
    return hashes[0];
}

#endif
