// defines: encoder_forward, encoder_backward
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

// buckets: host arrays of 3 * (B*T) + 1 ints, device copy dbuckets of the same size
static void encoder_backward(float *dwte, float *dwpe, int *buckets, int *dbuckets, const bf16 *dout, const int *tokens,
                             int B, int T, int C, int V, cudaStream_t s) {
    int N = B * T;
    int *ids = buckets, *start = buckets + N, *pos = buckets + 2 * N + 1;
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
    int *dids = dbuckets, *dstart = dbuckets + N, *dpos = dbuckets + 2 * N + 1;
    CUDA_CHECK(cudaMemcpyAsync(dids, ids, nb * sizeof(int), cudaMemcpyHostToDevice, s));
    CUDA_CHECK(cudaMemcpyAsync(dstart, start, (nb + 1) * sizeof(int), cudaMemcpyHostToDevice, s));
    CUDA_CHECK(cudaMemcpyAsync(dpos, pos, N * sizeof(int), cudaMemcpyHostToDevice, s));
    wte_backward_kernel<<<nb, 256, 0, s>>>(dwte, dout, dids, dstart, dpos, C);
    if (dwpe) wpe_backward_kernel<<<ceil_div((long long)T * C, 256), 256, 0, s>>>(dwpe, dout, B, T, C);
    CUDA_CHECK(cudaGetLastError());
    CUDA_CHECK(cudaStreamSynchronize(s));  // the host buckets are reused next call
}

#endif
