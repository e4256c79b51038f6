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

// rotates the q and k heads of qkv in place by +angle (or -angle: the backward); a thread takes 4
// pairs (16-byte accesses; hd a multiple of 8)
__global__ void rope_kernel(bf16 *qkv, const float *cos, const float *sin, int B, int T, int H, int KV, int hd, float sign) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    int rot = H + KV, all = H + 2 * KV, quads = hd / 8;
    if (idx >= (long long)B * T * rot * quads) return;
    int i = (int)(idx % quads) * 4, h = (int)(idx / quads % rot);
    long long bt = idx / ((long long)quads * rot);
    int t = (int)(bt % T);
    bf16 *x = qkv + (bt * all + h) * hd + 2 * i;
    float4 c = *(const float4 *)(cos + (size_t)t * hd / 2 + i), s = *(const float4 *)(sin + (size_t)t * hd / 2 + i);
    float cv[4] = { c.x, c.y, c.z, c.w }, sv[4] = { s.x, s.y, s.z, s.w }, v[8];
    load8(v, x);
    for (int k = 0; k < 4; k++) {
        float x0 = v[2 * k], x1 = v[2 * k + 1], sk = sign * sv[k];
        v[2 * k] = x0 * cv[k] - x1 * sk;
        v[2 * k + 1] = x0 * sk + x1 * cv[k];
    }
    store_bf16<8>(x, v);
}

static void rope(bf16 *qkv, const float *cos, const float *sin, int B, int T, int H, int KV, int hd, float sign, cudaStream_t st) {
    if (hd % 8 != 0) die("rope: head dimension %d is not a multiple of 8", hd);
    long long quads = (long long)B * T * (H + KV) * hd / 8;
    rope_kernel<<<ceil_div(quads, 256), 256, 0, st>>>(qkv, cos, sin, B, T, H, KV, hd, sign);
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

// dqkv (B, T, H + 2 KV, hd) from dout (B, T, H hd); qkv, out, stats as the forward left them;
// deterministic: the same bits run after run (cudnn_attention.h)
static void attention_backward(bf16 *dqkv, const bf16 *dout, const bf16 *qkv, const bf16 *out, const float *stats,
                               const float *cos, const float *sin, int B, int T, int H, int KV, int hd, int deterministic,
                               cudaStream_t st) {
    cudnn_attention_backward(dqkv, dout, qkv, out, stats, B, T, H, KV, hd, deterministic, st);
    if (cos) rope(dqkv, cos, sin, B, T, H, KV, hd, -1.0f, st);
}

#endif
