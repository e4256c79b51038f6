// defines: encoder_forward, EncoderBuckets, encoder_buckets_create, encoder_buckets_free, encoder_backward
// Token (+ learned position) embedding. The backward is deterministic: the host groups the
// positions of each token id, and one block sums a token's rows in a fixed order.
#ifndef LLMC_ENCODER_CUH
#define LLMC_ENCODER_CUH

#include "cuda_common.cuh"

__global__ void encoder_forward_kernel(bf16 *out, const int *tokens, const bf16 *wte, const bf16 *wpe, int N, int T, int C) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * C) return;
    int n = i / C, c = i % C;
    float v = __bfloat162float(wte[(long long)tokens[n] * C + c]);
    if (wpe) v += __bfloat162float(wpe[(long long)(n % T) * C + c]);
    out[i] = __float2bfloat16(v);
}

// block b adds the rows of dout at positions pos[start[b] .. start[b+1]) into dwte[ids[b]]
__global__ void wte_backward_kernel(float *dwte, const bf16 *dout, const int *ids, const int *start, const int *pos, int C) {
    int b = blockIdx.x;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float s = 0.0f;
        for (int j = start[b]; j < start[b + 1]; j++) s += __bfloat162float(dout[(long long)pos[j] * C + c]);
        dwte[(long long)ids[b] * C + c] += s;
    }
}

__global__ void wpe_backward_kernel(float *dwpe, const bf16 *dout, int B, int T, int C) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)T * C) return;
    float s = 0.0f;
    for (int b = 0; b < B; b++) s += __bfloat162float(dout[(long long)b * T * C + i]);
    dwpe[i] += s;
}

static void encoder_forward(bf16 *out, const int *tokens, const bf16 *wte, const bf16 *wpe, int B, int T, int C, cudaStream_t s) {
    encoder_forward_kernel<<<ceil_div((long long)B * T * C, 256), 256, 0, s>>>(out, tokens, wte, wpe, B * T, T, C);
    CUDA_CHECK(cudaGetLastError());
}

// The backward's bucket lists for N positions (3 N + 1 ints): made on the host in one of two
// pinned buffers in turn and copied to dev on the stream. A call waits only for the copy made two
// calls back, so the host can queue the next step while the GPU runs this one.
typedef struct { int *host[2], *dev; cudaEvent_t copied[2]; int next, N; } EncoderBuckets;

static void encoder_buckets_create(EncoderBuckets *b, int N) {
    for (int i = 0; i < 2; i++) {
        CUDA_CHECK(cudaMallocHost(&b->host[i], (3 * (size_t)N + 1) * sizeof(int)));
        CUDA_CHECK(cudaEventCreateWithFlags(&b->copied[i], cudaEventDisableTiming));
    }
    b->dev = (int *)cuda_malloc((3 * (size_t)N + 1) * sizeof(int));
    b->next = 0; b->N = N;
}

static void encoder_buckets_free(EncoderBuckets *b) {
    for (int i = 0; i < 2; i++) { CUDA_CHECK(cudaFreeHost(b->host[i])); CUDA_CHECK(cudaEventDestroy(b->copied[i])); }
    cuda_free(b->dev, (3 * (size_t)b->N + 1) * sizeof(int));
}

// tokens: the host's copy of the forward's B * T token ids (b->N of them)
static void encoder_backward(float *dwte, float *dwpe, EncoderBuckets *b, const bf16 *dout, const int *tokens,
                             int B, int T, int C, int V, cudaStream_t s) {
    int N = B * T, k = b->next;
    if (N != b->N) die("encoder_backward: %d positions, buckets for %d", N, b->N);
    b->next ^= 1;
    CUDA_CHECK(cudaEventSynchronize(b->copied[k]));  // the GPU has copied this buffer's last lists
    int *ids = b->host[k], *start = ids + N, *pos = ids + 2 * N + 1;
    // counting sort of the positions by token id, on the host (the tokens are there already)
    int *count = (int *)calloc_check((size_t)V + 1, sizeof(int));
    for (int n = 0; n < N; n++) count[tokens[n] + 1]++;
    for (int v = 0; v < V; v++) count[v + 1] += count[v];
    int nb = 0;
    for (int n = 0; n < N; n++) pos[count[tokens[n]]++] = n;  // count[v] ends at the end of v's range
    for (int j = 0; j < N; j++) {
        if (j == 0 || tokens[pos[j]] != tokens[pos[j - 1]]) { ids[nb] = tokens[pos[j]]; start[nb] = j; nb++; }
    }
    start[nb] = N;
    free(count);
    int *dids = b->dev, *dstart = dids + N, *dpos = dids + 2 * N + 1;
    CUDA_CHECK(cudaMemcpyAsync(dids, ids, nb * sizeof(int), cudaMemcpyHostToDevice, s));
    CUDA_CHECK(cudaMemcpyAsync(dstart, start, (nb + 1) * sizeof(int), cudaMemcpyHostToDevice, s));
    CUDA_CHECK(cudaMemcpyAsync(dpos, pos, N * sizeof(int), cudaMemcpyHostToDevice, s));
    CUDA_CHECK(cudaEventRecord(b->copied[k], s));
    wte_backward_kernel<<<nb, 256, 0, s>>>(dwte, dout, dids, dstart, dpos, C);
    if (dwpe) wpe_backward_kernel<<<ceil_div((long long)T * C, 256), 256, 0, s>>>(dwpe, dout, B, T, C);
    CUDA_CHECK(cudaGetLastError());
}

#endif
