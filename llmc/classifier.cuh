// defines: classifier_forward_backward
// Softmax over the first V logits, cross-entropy, and dlogits = (softmax - onehot) * dloss
// written over the logits in the same pass, so FP32 probabilities are never stored.
#ifndef LLMC_CLASSIFIER_CUH
#define LLMC_CLASSIFIER_CUH

#include "cuda_common.cuh"

// one block per row; dloss == 0 leaves the logits as they are (evaluation)
__global__ void classifier_kernel(bf16 *logits, float *losses, const int *targets, float dloss, int V, int Vp) {
    bf16 *lg = logits + (long long)blockIdx.x * Vp;
    float m = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, __bfloat162float(lg[i]));
    // block max through block_sum's layout: reduce in a warp, then across warps
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    __shared__ float wmax[32];
    if (threadIdx.x % 32 == 0) wmax[threadIdx.x / 32] = m;
    __syncthreads();
    m = -INFINITY;
    for (int w = 0; w < (int)blockDim.x / 32; w++) m = fmaxf(m, wmax[w]);
    float s = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) s += expf(__bfloat162float(lg[i]) - m);
    s = block_sum(s);
    int t = targets[blockIdx.x];
    float target_logit = __bfloat162float(lg[t]);
    __syncthreads();  // every thread has read lg[t] before it is overwritten
    if (threadIdx.x == 0) losses[blockIdx.x] = logf(s) + m - target_logit;
    if (dloss == 0.0f) return;
    float inv = 1.0f / s;
    for (int i = threadIdx.x; i < Vp; i += blockDim.x) {
        float p = i < V ? expf(__bfloat162float(lg[i]) - m) * inv : 0.0f;
        lg[i] = __float2bfloat16((p - (i == t ? 1.0f : 0.0f)) * dloss);
    }
}

static void classifier_forward_backward(bf16 *logits, float *losses, const int *targets, float dloss, int N, int V, int Vp,
                                        cudaStream_t stream) {
    classifier_kernel<<<N, 512, 0, stream>>>(logits, losses, targets, dloss, V, Vp);
    CUDA_CHECK(cudaGetLastError());
}

#endif
