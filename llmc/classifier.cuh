// defines: classifier_forward_backward
// Softmax over the first V logits, cross-entropy, and dlogits = (softmax - onehot) * dloss
// written over the logits in the same kernel, so FP32 probabilities are never stored. Two
// passes over a row (an online max + sum of exponentials, then the write), 16-byte accesses:
// the (N, Vp) BF16 logits are the largest tensor of a GPT-2 step.
#ifndef LLMC_CLASSIFIER_CUH
#define LLMC_CLASSIFIER_CUH

#include "cuda_common.cuh"

#define CLASSIFIER_THREADS 1024

// merges the running (max, sum of exp(x - max)) pair (m, s) with (m2, s2)
__device__ inline void softmax_merge(float &m, float &s, float m2, float s2) {
    float mx = fmaxf(m, m2);
    if (mx == -INFINITY) return;
    s = (m == -INFINITY ? 0.0f : s * expf(m - mx)) + (m2 == -INFINITY ? 0.0f : s2 * expf(m2 - mx));
    m = mx;
}

// one block per row (Vp a multiple of 8); dloss == 0 leaves the logits as they are (evaluation)
__global__ void __launch_bounds__(CLASSIFIER_THREADS) classifier_kernel(bf16 *logits, float *losses, const int *targets,
                                                                       float dloss, int V, int Vp) {
    bf16 *lg = logits + (size_t)blockIdx.x * Vp;
    float m = -INFINITY, s = 0.0f, v[8];
    for (int i = threadIdx.x * 8; i < V; i += blockDim.x * 8) {
        load8(v, lg + i);
        int n = min(8, V - i);
        float mx = m;
        for (int k = 0; k < n; k++) mx = fmaxf(mx, v[k]);
        float part = 0.0f;
        for (int k = 0; k < n; k++) part += expf(v[k] - mx);
        s = (m == -INFINITY ? 0.0f : s * expf(m - mx)) + part;
        m = mx;
    }
    // the pairs over the warp, then over the warps, in a fixed order
    for (int o = 16; o > 0; o >>= 1) softmax_merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
    __shared__ float wm[32], ws[32];
    if (threadIdx.x % 32 == 0) { wm[threadIdx.x / 32] = m; ws[threadIdx.x / 32] = s; }
    __syncthreads();
    m = wm[0]; s = ws[0];
    for (int w = 1; w < (int)blockDim.x / 32; w++) softmax_merge(m, s, wm[w], ws[w]);
    int t = targets[blockIdx.x];
    if (threadIdx.x == 0) losses[blockIdx.x] = logf(s) + m - __bfloat162float(lg[t]);
    if (dloss == 0.0f) return;
    __syncthreads();  // lg[t] is read before it is overwritten
    float inv = 1.0f / s;
    for (int i = threadIdx.x * 8; i < Vp; i += blockDim.x * 8) {
        load8(v, lg + i);
        for (int k = 0; k < 8; k++) {
            float p = i + k < V ? expf(v[k] - m) * inv : 0.0f;
            v[k] = (p - (i + k == t ? 1.0f : 0.0f)) * dloss;
        }
        store_bf16<8>(lg + i, v);
    }
}

static void classifier_forward_backward(bf16 *logits, float *losses, const int *targets, float dloss, int N, int V, int Vp,
                                        cudaStream_t stream) {
    if (Vp % 8 != 0) die("classifier: padded vocabulary %d is not a multiple of 8", Vp);
    classifier_kernel<<<N, CLASSIFIER_THREADS, 0, stream>>>(logits, losses, targets, dloss, V, Vp);
    CUDA_CHECK(cudaGetLastError());
}

#endif
