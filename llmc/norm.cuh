// defines: norm_forward, norm_backward
// LayerNorm (with bias) and RMSNorm (bias NULL) over rows of width C (a multiple of 8): BF16 in
// and out, FP32 statistics, a warp per row with 16-byte accesses. The backward's weight
// gradients sum over rows in a fixed order (deterministic).
#ifndef LLMC_NORM_CUH
#define LLMC_NORM_CUH

#include "cuda_common.cuh"

#define NORM_ROWS 64  // rows per block in the backward: the weight-gradient partials are per block

// a warp per row; mean may be NULL (RMSNorm)
__global__ void norm_forward_kernel(bf16 *out, float *mean, float *rstd, const bf16 *inp, const bf16 *w,
                                    const bf16 *b, int N, int C, float eps) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const bf16 *x = inp + (size_t)row * C;
    float v[8], s = 0.0f;
    if (b) {
        for (int i = lane * 8; i < C; i += 256) { load8(v, x + i); for (int k = 0; k < 8; k++) s += v[k]; }
        s = warp_sum(s) / C;
    }
    float var = 0.0f;
    for (int i = lane * 8; i < C; i += 256) { load8(v, x + i); for (int k = 0; k < 8; k++) var += (v[k] - s) * (v[k] - s); }
    float r = rsqrtf(warp_sum(var) / C + eps);
    bf16 *o = out + (size_t)row * C;
    for (int i = lane * 8; i < C; i += 256) {
        float wv[8], bv[8];
        load8(v, x + i); load8(wv, w + i);
        if (b) load8(bv, b + i);
        for (int k = 0; k < 8; k++) v[k] = (v[k] - s) * r * wv[k] + (b ? bv[k] : 0.0f);
        store_bf16<8>(o + i, v);
    }
    if (lane == 0) { if (mean) mean[row] = s; rstd[row] = r; }
}

// dinp (N, C) += gradient through the norm, a warp per row; then the block's weight (and bias)
// gradient partials, a thread per column over the block's rows in order
__global__ void norm_backward_kernel(bf16 *dinp, float *partial, const bf16 *dout, const bf16 *inp, const bf16 *w,
                                     const float *mean, const float *rstd, int N, int C, int layernorm) {
    int n0 = blockIdx.x * NORM_ROWS, n1 = min(n0 + NORM_ROWS, N), lane = threadIdx.x % 32;
    for (int n = n0 + threadIdx.x / 32; n < n1; n += blockDim.x / 32) {
        const bf16 *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        float mu = layernorm ? mean[n] : 0.0f, r = rstd[n];
        float xv[8], dv[8], wv[8], dmean = 0.0f, dnn = 0.0f;
        for (int i = lane * 8; i < C; i += 256) {
            load8(xv, x + i); load8(dv, dy + i); load8(wv, w + i);
            for (int k = 0; k < 8; k++) { float g = wv[k] * dv[k]; dmean += g; dnn += g * (xv[k] - mu) * r; }
        }
        dmean = layernorm ? warp_sum(dmean) / C : 0.0f;
        dnn = warp_sum(dnn) / C;
        bf16 *dx = dinp + (size_t)n * C;
        for (int i = lane * 8; i < C; i += 256) {
            float old[8];
            load8(xv, x + i); load8(dv, dy + i); load8(wv, w + i); load8(old, dx + i);
            for (int k = 0; k < 8; k++) old[k] += (wv[k] * dv[k] - dmean - (xv[k] - mu) * r * dnn) * r;
            store_bf16<8>(dx + i, old);
        }
    }
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float dw = 0.0f, db = 0.0f;
        for (int n = n0; n < n1; n++) {
            float d = __bfloat162float(dout[(size_t)n * C + c]), mu = layernorm ? mean[n] : 0.0f;
            dw += d * (__bfloat162float(inp[(size_t)n * C + c]) - mu) * rstd[n];
            db += d;
        }
        partial[(size_t)blockIdx.x * 2 * C + c] = dw;
        partial[(size_t)blockIdx.x * 2 * C + C + c] = db;
    }
}

static void norm_forward(bf16 *out, float *mean, float *rstd, const bf16 *inp, const bf16 *w, const bf16 *b,
                         int N, int C, float eps, cudaStream_t stream) {
    if (C % 8 != 0) die("norm: width %d is not a multiple of 8", C);
    norm_forward_kernel<<<ceil_div(N, 8), 256, 0, stream>>>(out, mean, rstd, inp, w, b, N, C, eps);
    CUDA_CHECK(cudaGetLastError());
}

// scratch: ceil(N / NORM_ROWS) * 2C floats; dinp is accumulated into (the residual gradient)
static void norm_backward(bf16 *dinp, float *dw, float *db, float *scratch, const bf16 *dout, const bf16 *inp,
                          const bf16 *w, const float *mean, const float *rstd, int N, int C, cudaStream_t stream) {
    int blocks = ceil_div(N, NORM_ROWS);
    norm_backward_kernel<<<blocks, 256, 0, stream>>>(dinp, scratch, dout, inp, w, mean, rstd, N, C, db != NULL);
    CUDA_CHECK(cudaGetLastError());
    sum_rows(dw, scratch, blocks, C, 2 * C, stream);
    if (db) sum_rows(db, scratch + C, blocks, C, 2 * C, stream);
}

#endif
