// defines: norm_forward, norm_backward
// LayerNorm (with bias) and RMSNorm (bias NULL) over rows of width C (a multiple of 8): BF16 in
// and out, FP32 statistics, 16-byte accesses: the forward a warp per row, the backward a few rows a
// warp. The backward's weight gradients sum over rows in a fixed order (deterministic).
#ifndef LLMC_NORM_CUH
#define LLMC_NORM_CUH

#include "cuda_common.cuh"

#define NORM_ROWS 32   // rows per block in the backward: the weight-gradient partials are per block
#define NORM_WARPS 8   // warps per block in the backward, NORM_ROWS / NORM_WARPS rows each

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

// dinp (N, C) += gradient through the norm; the block's weight (and bias) gradient partials. A
// warp takes NORM_ROWS / NORM_WARPS rows: their two row sums with all the rows' loads in flight,
// then per 256 columns (8 a lane) dx and the rows' weight-gradient sums in registers; the warps'
// sums meet in shared memory, added in warp order. (A thread per column walking the block's rows
// afterwards ran at a fifth of the bandwidth.)
__global__ void __launch_bounds__(NORM_WARPS * 32) norm_backward_kernel(bf16 *dinp, float *partial, const bf16 *dout,
                                                                        const bf16 *inp, const bf16 *w, const float *mean,
                                                                        const float *rstd, int N, int C, int layernorm) {
    const int RW = NORM_ROWS / NORM_WARPS;
    __shared__ alignas(16) float s_dw[NORM_WARPS][256], s_db[NORM_WARPS][256];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n0 = blockIdx.x * NORM_ROWS + warp * RW;
    float mu[RW], r[RW], dmean[RW], dnn[RW];
    #pragma unroll
    for (int j = 0; j < RW; j++) {
        int n = min(n0 + j, N - 1);  // a row past N is computed, never stored
        mu[j] = layernorm ? mean[n] : 0.0f; r[j] = rstd[n]; dmean[j] = 0.0f; dnn[j] = 0.0f;
    }
    for (int i = lane * 8; i < C; i += 256) {
        float wv[8], xv[RW][8], dv[RW][8];
        load8(wv, w + i);
        #pragma unroll
        for (int j = 0; j < RW; j++) {
            size_t o = (size_t)min(n0 + j, N - 1) * C + i;
            load8(xv[j], inp + o); load8(dv[j], dout + o);
        }
        #pragma unroll
        for (int j = 0; j < RW; j++)
            for (int k = 0; k < 8; k++) { float g = wv[k] * dv[j][k]; dmean[j] += g; dnn[j] += g * (xv[j][k] - mu[j]) * r[j]; }
    }
    #pragma unroll
    for (int j = 0; j < RW; j++) { dmean[j] = layernorm ? warp_sum(dmean[j]) / C : 0.0f; dnn[j] = warp_sum(dnn[j]) / C; }
    for (int c0 = 0; c0 < C; c0 += 256) {
        int i = c0 + lane * 8;
        float dw[8] = {}, db[8] = {};
        if (i < C) {
            float wv[8], xv[RW][8], dv[RW][8], old[RW][8];
            load8(wv, w + i);
            #pragma unroll
            for (int j = 0; j < RW; j++) {
                size_t o = (size_t)min(n0 + j, N - 1) * C + i;
                load8(xv[j], inp + o); load8(dv[j], dout + o); load8(old[j], dinp + o);
            }
            #pragma unroll
            for (int j = 0; j < RW; j++) {
                if (n0 + j >= N) break;
                for (int k = 0; k < 8; k++) {
                    float nrm = (xv[j][k] - mu[j]) * r[j];
                    old[j][k] += (wv[k] * dv[j][k] - dmean[j] - nrm * dnn[j]) * r[j];
                    dw[k] += dv[j][k] * nrm; db[k] += dv[j][k];
                }
                store_bf16<8>(dinp + (size_t)(n0 + j) * C + i, old[j]);
            }
        }
        float4 *pw = (float4 *)&s_dw[warp][lane * 8], *pb = (float4 *)&s_db[warp][lane * 8];
        pw[0] = make_float4(dw[0], dw[1], dw[2], dw[3]); pw[1] = make_float4(dw[4], dw[5], dw[6], dw[7]);
        pb[0] = make_float4(db[0], db[1], db[2], db[3]); pb[1] = make_float4(db[4], db[5], db[6], db[7]);
        __syncthreads();
        if (c0 + (int)threadIdx.x < C) {
            float sw = 0.0f, sb = 0.0f;
            for (int q = 0; q < NORM_WARPS; q++) { sw += s_dw[q][threadIdx.x]; sb += s_db[q][threadIdx.x]; }
            partial[(size_t)blockIdx.x * 2 * C + c0 + threadIdx.x] = sw;
            partial[(size_t)blockIdx.x * 2 * C + C + c0 + threadIdx.x] = sb;
        }
        __syncthreads();
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
    norm_backward_kernel<<<blocks, NORM_WARPS * 32, 0, stream>>>(dinp, scratch, dout, inp, w, mean, rstd, N, C, db != NULL);
    CUDA_CHECK(cudaGetLastError());
    sum_rows(dw, scratch, blocks, C, 2 * C, stream);
    if (db) sum_rows(db, scratch + C, blocks, C, 2 * C, stream);
}

#endif
