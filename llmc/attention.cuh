// defines: attention_forward, attention_backward
// Causal attention with grouped-query heads on the qkv projection (B, T, H + 2 KV, hd): RoPE
// (LLaMA) rotates q and k in place, then cuDNN's flash attention (cudnn_attention.cpp) reads
// q, k and v where they are; or the FP8 core (attention_fp8.cuh) quantizes them in place and runs
// its own forward. The backward runs the same steps in reverse, cuDNN's in both cases.
#ifndef LLMC_ATTENTION_CUH
#define LLMC_ATTENTION_CUH

#include "cuda_common.cuh"
#include "cudnn_attention.h"
#include "attention_fp8.cuh"

// rotates the q and k heads of qkv in place by +angle (or -angle: the backward)
__global__ void rope_kernel(bf16 *qkv, const float *cos, const float *sin, int B, int T, int H, int KV, int hd, float sign) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;  // one thread per pair
    int rot = H + KV, all = H + 2 * KV;
    if (idx >= (long long)B * T * rot * hd / 2) return;
    int i = idx % (hd / 2);
    int h = (idx / (hd / 2)) % rot;
    long long bt = idx / ((long long)hd / 2 * rot);
    int t = bt % T;
    bf16 *x = qkv + (bt * all + h) * hd + 2 * i;
    float c = cos[t * hd / 2 + i], s = sign * sin[t * hd / 2 + i];
    float x0 = __bfloat162float(x[0]), x1 = __bfloat162float(x[1]);
    x[0] = __float2bfloat16(x0 * c - x1 * s);
    x[1] = __float2bfloat16(x0 * s + x1 * c);
}

static void rope(bf16 *qkv, const float *cos, const float *sin, int B, int T, int H, int KV, int hd, float sign, cudaStream_t st) {
    long long pairs = (long long)B * T * (H + KV) * hd / 2;
    rope_kernel<<<ceil_div(pairs, 256), 256, 0, st>>>(qkv, cos, sin, B, T, H, KV, hd, sign);
    CUDA_CHECK(cudaGetLastError());
}

// out (B, T, H hd); stats (B, H, T) for the backward, NULL for inference; cos NULL: no RoPE;
// fp8 NULL: the BF16 core, else the FP8 core's scratch
static void attention_forward(bf16 *out, float *stats, bf16 *qkv, const float *cos, const float *sin, const Att8 *fp8, int B,
                              int T, int H, int KV, int hd, cudaStream_t st) {
    if (cos) rope(qkv, cos, sin, B, T, H, KV, hd, 1.0f, st);
    if (fp8) attention_fp8_forward(out, stats, qkv, fp8, B, T, H, KV, hd, st);
    else cudnn_attention_forward(out, stats, qkv, B, T, H, KV, hd, st);
}

// dqkv (B, T, H + 2 KV, hd) from dout (B, T, H hd); qkv, out, stats as the forward left them
static void attention_backward(bf16 *dqkv, const bf16 *dout, const bf16 *qkv, const bf16 *out, const float *stats,
                               const float *cos, const float *sin, int B, int T, int H, int KV, int hd, cudaStream_t st) {
    cudnn_attention_backward(dqkv, dout, qkv, out, stats, B, T, H, KV, hd, st);
    if (cos) rope(dqkv, cos, sin, B, T, H, KV, hd, -1.0f, st);
}

#endif
