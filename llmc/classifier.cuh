// defines: classifier_forward_backward, loss_mean_add
// Softmax over the first V logits, cross-entropy, and dlogits = (softmax - onehot) * dloss
// written over the logits in the same kernel, so FP32 probabilities are never stored. The
// (N, Vp) BF16 logits are the largest tensor of a GPT-2 step (3.3 GB at B = 32): a block takes a
// row and keeps it in registers, so the row is read once and written once (the max, the sum of
// exponentials and the gradient are three passes over registers). The two-pass form that read
// the row again and kept one 16-byte load a thread in flight ran at half of HBM bandwidth.
#ifndef LLMC_CLASSIFIER_CUH
#define LLMC_CLASSIFIER_CUH

#include "cuda_common.cuh"

#define CLASSIFIER_THREADS 1024
#define LOG2E 1.4426950408889634f

// One block per row (Vp a multiple of 8). Thread t holds the row's 8-logit chunks t + j
// CLASSIFIER_THREADS, j < CH, as packed BF16; dloss == 0 leaves the logits as they are (evaluation).
template <int CH>
__global__ void __launch_bounds__(CLASSIFIER_THREADS) classifier_kernel(bf16 *logits, float *losses, const int *targets,
                                                                       float dloss, int V, int Vp) {
    bf16 *lg = logits + (size_t)blockIdx.x * Vp;
    uint4 raw[CH];
    #pragma unroll
    for (int j = 0; j < CH; j++) {
        int i = (threadIdx.x + j * CLASSIFIER_THREADS) * 8;
        raw[j] = i < Vp ? *(const uint4 *)(lg + i) : make_uint4(0, 0, 0, 0);
    }
    int t = targets[blockIdx.x];
    float xt = __bfloat162float(lg[t]);  // read before any thread writes (the reductions between wait for all)
    float m = -INFINITY, s = 0.0f, x[8];
    #pragma unroll
    for (int j = 0; j < CH; j++) {
        int i0 = (threadIdx.x + j * CLASSIFIER_THREADS) * 8;
        unpack8(x, raw[j]);
        for (int k = 0; k < 8; k++) if (i0 + k < V) m = fmaxf(m, x[k]);
    }
    m = block_max(m);
    #pragma unroll
    for (int j = 0; j < CH; j++) {
        int i0 = (threadIdx.x + j * CLASSIFIER_THREADS) * 8;
        unpack8(x, raw[j]);
        for (int k = 0; k < 8; k++) if (i0 + k < V) s += exp2_fast((x[k] - m) * LOG2E);
    }
    s = block_sum(s);
    if (threadIdx.x == 0) losses[blockIdx.x] = logf(s) + m - xt;
    if (dloss == 0.0f) return;
    float inv = 1.0f / s;
    #pragma unroll
    for (int j = 0; j < CH; j++) {
        int i0 = (threadIdx.x + j * CLASSIFIER_THREADS) * 8;
        if (i0 >= Vp) break;
        unpack8(x, raw[j]);
        for (int k = 0; k < 8; k++) {
            int i = i0 + k;
            x[k] = i < V ? (exp2_fast((x[k] - m) * LOG2E) * inv - (i == t ? 1.0f : 0.0f)) * dloss : 0.0f;  // padding: 0
        }
        store_bf16<8>(lg + i0, x);
    }
}

static void classifier_forward_backward(bf16 *logits, float *losses, const int *targets, float dloss, int N, int V, int Vp,
                                        cudaStream_t stream) {
    if (Vp % 8 != 0) die("classifier: padded vocabulary %d is not a multiple of 8", Vp);
    int chunks = ceil_div(Vp, 8 * CLASSIFIER_THREADS);  // a thread's: LLaMA's 32000 logits take 4, GPT-2's 50304 7
    if (chunks <= 4) classifier_kernel<4><<<N, CLASSIFIER_THREADS, 0, stream>>>(logits, losses, targets, dloss, V, Vp);
    else if (chunks <= 7) classifier_kernel<7><<<N, CLASSIFIER_THREADS, 0, stream>>>(logits, losses, targets, dloss, V, Vp);
    else if (chunks <= 16) classifier_kernel<16><<<N, CLASSIFIER_THREADS, 0, stream>>>(logits, losses, targets, dloss, V, Vp);
    else die("classifier: padded vocabulary %d exceeds %d", Vp, 16 * 8 * CLASSIFIER_THREADS);
    CUDA_CHECK(cudaGetLastError());
}

// *acc += weight x the mean of the N losses, summed in FP64 in a fixed order (one block: the
// same bits every run), so the host reads one number a step and never waits for it mid-step
__global__ void __launch_bounds__(CLASSIFIER_THREADS) loss_mean_kernel(double *acc, const float *losses, int N, double weight) {
    double s = 0.0;
    for (int i = threadIdx.x; i < N; i += CLASSIFIER_THREADS) s += losses[i];
    s = block_sum(s);
    if (threadIdx.x == 0) *acc += s / N * weight;
}

static void loss_mean_add(double *acc, const float *losses, int N, double weight, cudaStream_t stream) {
    loss_mean_kernel<<<1, CLASSIFIER_THREADS, 0, stream>>>(acc, losses, N, weight);
    CUDA_CHECK(cudaGetLastError());
}

#undef LOG2E
#endif
