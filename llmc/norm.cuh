// defines: NormGradPass, norm_forward, norm_backward
// LayerNorm (with bias) and RMSNorm (bias NULL) over rows of width C (a multiple of 8): BF16 in
// and out, FP32 statistics, 16-byte accesses: the forward a warp per row, the backward a few rows a
// warp. The backward's weight gradients sum over rows in a fixed order (deterministic). The
// backward's output is the residual gradient, which the next linear back (attproj or fcproj)
// quantizes: it can make that quantization's first pass as it writes the rows (NormGradPass).
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

// The first pass of the quantization of the rows norm_backward writes (llmc/quantize.cuh's
// quantize_grad, laid out as its grad_part says, in groups of NORM_ROWS rows and one tile a row):
// per row the maximum of |g col_scale|, per column and block of rows the maximum of
// |g row_scale| and the sum of g, g the BF16 values written.
typedef struct {
    const float *col_scale, *row_scale;  // (C), (N)
    float *row_max, *col_max, *col_sum;  // (N), (ceil(N / NORM_ROWS), C) each
} NormGradPass;

// dinp (N, C) += gradient through the norm; the block's weight (and bias) gradient partials; with
// PASS, the first pass of dinp's quantization. A warp takes NORM_ROWS / NORM_WARPS rows: their
// two row sums with all the rows' loads in flight, then per 256 columns (8 a lane) dx and the
// rows' column sums in registers; the warps' sums meet in shared memory, combined in warp order.
// (A thread per column walking the block's rows afterwards ran at a fifth of the bandwidth.) Two
// blocks an SM: unbounded, PASS took 162 registers, one block, and 12% more time.
template <bool PASS>
__global__ void __launch_bounds__(NORM_WARPS * 32, 2) norm_backward_kernel(bf16 *dinp, float *partial, const bf16 *dout,
                                                                        const bf16 *inp, const bf16 *w, const float *mean,
                                                                        const float *rstd, int N, int C, int layernorm,
                                                                        NormGradPass pass) {
    const int RW = NORM_ROWS / NORM_WARPS, NP = PASS ? NORM_WARPS : 1;
    __shared__ alignas(16) float s_dw[NORM_WARPS][256], s_db[NORM_WARPS][256], s_gm[NP][256], s_gs[NP][256], s_rs[NORM_ROWS];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n0 = blockIdx.x * NORM_ROWS + warp * RW;
    float mu[RW], r[RW], dmean[RW], dnn[RW], rmax[RW];
    #pragma unroll
    for (int j = 0; j < RW; j++) {
        int n = min(n0 + j, N - 1);  // a row past N is computed, never stored
        mu[j] = layernorm ? mean[n] : 0.0f; r[j] = rstd[n]; dmean[j] = 0.0f; dnn[j] = 0.0f; rmax[j] = 0.0f;
    }
    if (PASS) {
        if (threadIdx.x < NORM_ROWS) s_rs[threadIdx.x] = pass.row_scale[min(blockIdx.x * NORM_ROWS + threadIdx.x, N - 1)];
        __syncthreads();
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
        float dw[8] = {}, db[8] = {}, gm[8] = {}, gs[8] = {};
        if (i < C) {
            float wv[8], xv[RW][8], dv[RW][8], old[RW][8], cs[8];
            load8(wv, w + i);
            if (PASS) { *(float4 *)cs = *(const float4 *)(pass.col_scale + i); *(float4 *)(cs + 4) = *(const float4 *)(pass.col_scale + i + 4); }
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
                if (PASS)
                    for (int k = 0; k < 8; k++) {
                        float g = __bfloat162float(__float2bfloat16(old[j][k]));  // as written
                        rmax[j] = fmaxf(rmax[j], fabsf(g * cs[k]));
                        gm[k] = fmaxf(gm[k], fabsf(g * s_rs[warp * RW + j]));
                        gs[k] += g;
                    }
            }
        }
        float4 *pw = (float4 *)&s_dw[warp][lane * 8], *pb = (float4 *)&s_db[warp][lane * 8];
        pw[0] = make_float4(dw[0], dw[1], dw[2], dw[3]); pw[1] = make_float4(dw[4], dw[5], dw[6], dw[7]);
        pb[0] = make_float4(db[0], db[1], db[2], db[3]); pb[1] = make_float4(db[4], db[5], db[6], db[7]);
        if (PASS) {
            float4 *pm = (float4 *)&s_gm[warp][lane * 8], *ps = (float4 *)&s_gs[warp][lane * 8];
            pm[0] = make_float4(gm[0], gm[1], gm[2], gm[3]); pm[1] = make_float4(gm[4], gm[5], gm[6], gm[7]);
            ps[0] = make_float4(gs[0], gs[1], gs[2], gs[3]); ps[1] = make_float4(gs[4], gs[5], gs[6], gs[7]);
        }
        __syncthreads();
        if (c0 + (int)threadIdx.x < C) {
            float sw = 0.0f, sb = 0.0f;
            for (int q = 0; q < NORM_WARPS; q++) { sw += s_dw[q][threadIdx.x]; sb += s_db[q][threadIdx.x]; }
            partial[(size_t)blockIdx.x * 2 * C + c0 + threadIdx.x] = sw;
            partial[(size_t)blockIdx.x * 2 * C + C + c0 + threadIdx.x] = sb;
            if (PASS) {
                float m = 0.0f, sg = 0.0f;
                for (int q = 0; q < NORM_WARPS; q++) { m = fmaxf(m, s_gm[q][threadIdx.x]); sg += s_gs[q][threadIdx.x]; }
                pass.col_max[(size_t)blockIdx.x * C + c0 + threadIdx.x] = m;
                pass.col_sum[(size_t)blockIdx.x * C + c0 + threadIdx.x] = sg;
            }
        }
        __syncthreads();
    }
    if (PASS)
        for (int j = 0; j < RW; j++) {
            float m = warp_max(rmax[j]);
            if (lane == 0 && n0 + j < N) pass.row_max[n0 + j] = m;
        }
}

static void norm_forward(bf16 *out, float *mean, float *rstd, const bf16 *inp, const bf16 *w, const bf16 *b,
                         int N, int C, float eps, cudaStream_t stream) {
    if (C % 8 != 0) die("norm: width %d is not a multiple of 8", C);
    norm_forward_kernel<<<ceil_div(N, 8), 256, 0, stream>>>(out, mean, rstd, inp, w, b, N, C, eps);
    CUDA_CHECK(cudaGetLastError());
}

// scratch: ceil(N / NORM_ROWS) * 2C floats; dinp is accumulated into (the residual gradient);
// pass: NULL, or where the first pass of dinp's quantization goes
static void norm_backward(bf16 *dinp, float *dw, float *db, float *scratch, const bf16 *dout, const bf16 *inp,
                          const bf16 *w, const float *mean, const float *rstd, int N, int C, const NormGradPass *pass,
                          cudaStream_t stream) {
    int blocks = ceil_div(N, NORM_ROWS);
    NormGradPass none = {};
    (pass ? norm_backward_kernel<true> : norm_backward_kernel<false>)<<<blocks, NORM_WARPS * 32, 0, stream>>>(
        dinp, scratch, dout, inp, w, mean, rstd, N, C, db != NULL, pass ? *pass : none);
    CUDA_CHECK(cudaGetLastError());
    sum_rows(dw, scratch, blocks, C, 2 * C, stream);
    if (db) sum_rows(db, scratch + C, blocks, C, 2 * C, stream);
}

#endif
