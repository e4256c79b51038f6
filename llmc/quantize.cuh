// defines: fp8, fp8_type, RowSource, rows_plain, rows_norm, rows_act, quantize_rows, quantize_cols_t,
//          dge_scale
// Vector-wise absmax quantization on the GPU (SPEC.md 4), bit-identical to the CPU's
// quantize_matrix: s = absmax / max of the format, codes = round(x / s) by the rules of quant.h,
// stored as FP8 bytes (4-bit codes are exact in E4M3, which is how Hopper's FP8 tensor cores run
// FP4). Per row (tokens of X, output channels of W, tokens of the dgrad gradient) or per column
// (output channels of the wgrad gradient); the codes the backward contracts over tokens or
// output channels are written transposed as well, since Hopper's FP8 GEMMs are TN only.
// test/test_quant_gpu checks every kernel against the CPU.
#ifndef LLMC_QUANTIZE_CUH
#define LLMC_QUANTIZE_CUH

#include <cuda_fp8.h>
#include "cuda_common.cuh"
#include "quant.h"
#include "activations.cuh"

typedef __nv_fp8_storage_t fp8;

// the cuBLASLt type of a format's FP8 bytes
static cudaDataType fp8_type(Format f) { return f == FMT_E5M2 ? CUDA_R_8F_E5M2 : CUDA_R_8F_E4M3; }

// the FP8 byte of a code (already on the format's grid, so the conversion is exact)
__device__ inline fp8 code_byte(float code, Format f) {
    return __nv_cvt_float_to_fp8(code, __NV_SATFINITE, f == FMT_E5M2 ? __NV_E5M2 : __NV_E4M3);
}

__device__ inline fp8 quantize_one(float x, float s, Format f) { return code_byte(s == 0.0f ? 0.0f : quant_round(x / s, f), f); }

// What a quantized linear reads, row by row: BF16 rows as they are (times col_scale[col] when
// given: the dgrad gradient's folded weight scale), or the rows a LayerNorm / RMSNorm, GELU or
// SwiGLU makes of x on the fly, so their BF16 output is never written (SPEC.md 3).
enum { ROWS_PLAIN, ROWS_NORM, ROWS_GELU, ROWS_SWIGLU };
typedef struct {
    int op;
    const bf16 *x;               // (rows, cols); SwiGLU: (rows, 2 cols) = [gate | up]
    const float *col_scale;      // PLAIN: (cols) or NULL
    const bf16 *w, *b;           // NORM: weight, and bias (LayerNorm) or NULL (RMSNorm)
    float *mean, *rstd;          // NORM: (rows) statistics out, mean NULL for RMSNorm
    float eps;
    bf16 *out;                   // where a BF16 linear wants the rows materialized
} RowSource;

#define QROWS 32  // rows per block: the transposed codes go out in 32-byte runs
#define QCOLS 64

__device__ inline float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// 8 consecutive values v[0..7] of row r at column c (a multiple of 8)
template <int OP>
__device__ inline void source_load8(float *v, const RowSource &in, int r, int c, int cols, float mu, float rs) {
    const bf16 *xr = in.x + (size_t)r * (OP == ROWS_SWIGLU ? 2 * cols : cols);
    load8(v, xr + c);
    if (OP == ROWS_PLAIN && in.col_scale) for (int k = 0; k < 8; k++) v[k] *= in.col_scale[c + k];
    if (OP == ROWS_GELU) for (int k = 0; k < 8; k++) v[k] = gelu(v[k]);
    if (OP == ROWS_SWIGLU) {
        float u[8];
        load8(u, xr + cols + c);
        for (int k = 0; k < 8; k++) v[k] = swiglu(v[k], u[k]);
    }
    if (OP == ROWS_NORM) {
        float w[8], b[8];
        load8(w, in.w + c);
        if (in.b) load8(b, in.b + c);
        for (int k = 0; k < 8; k++) v[k] = (v[k] - mu) * rs * w[k] + (in.b ? b[k] : 0.0f);
    }
}

// A block quantizes 32 rows of the source per row (cols a multiple of 8): a warp per row for the
// norm statistics and the absmax, then 32 x 64 tiles, each thread 8 codes, written row-major
// (codes, if given) and, through shared memory, transposed (codes_t (cols, rows), if given).
// With col_amax: also the absmax of each column of x * row_scale[row] (the wgrad gradient's
// scale, atomicMax on the float bits, exact and order-free), and with col_partial the column
// sums of x over the block's rows (the bias gradient, summed over blocks by sum_rows).
template <int OP>
__global__ void __launch_bounds__(256) quantize_rows_kernel(fp8 *codes, fp8 *codes_t, float *scales, RowSource in, int rows,
                                                           int cols, Format f, unsigned *col_amax, const float *row_scale,
                                                           float *col_partial) {
    __shared__ float s_scale[QROWS], s_mean[QROWS], s_rstd[QROWS];
    __shared__ __align__(8) fp8 tile[QCOLS][QROWS + 8];
    __shared__ float csum[QROWS][QCOLS + 1];
    __shared__ unsigned cmax[QCOLS];
    int r0 = blockIdx.x * QROWS, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int j = warp; j < QROWS; j += 8) {
        int r = r0 + j;
        float mu = 0.0f, rs = 1.0f, amax = 0.0f, v[8];
        if (r < rows) {
            if (OP == ROWS_NORM) {
                const bf16 *xr = in.x + (size_t)r * cols;
                if (in.b) {
                    for (int c = lane * 8; c < cols; c += 256) { load8(v, xr + c); for (int k = 0; k < 8; k++) mu += v[k]; }
                    mu = warp_sum(mu) / cols;
                }
                float var = 0.0f;
                for (int c = lane * 8; c < cols; c += 256) { load8(v, xr + c); for (int k = 0; k < 8; k++) var += (v[k] - mu) * (v[k] - mu); }
                rs = rsqrtf(warp_sum(var) / cols + in.eps);
                if (lane == 0) { if (in.mean) in.mean[r] = mu; in.rstd[r] = rs; }
            }
            for (int c = lane * 8; c < cols; c += 256) {
                source_load8<OP>(v, in, r, c, cols, mu, rs);
                for (int k = 0; k < 8; k++) amax = fmaxf(amax, fabsf(v[k]));
            }
            amax = warp_max(amax);
        }
        if (lane == 0) {
            s_mean[j] = mu; s_rstd[j] = rs; s_scale[j] = amax / format_max(f);
            if (r < rows) scales[r] = s_scale[j];
        }
    }
    __syncthreads();
    int j = threadIdx.x / 8, cc = (threadIdx.x % 8) * 8, r = r0 + j;
    int tc = threadIdx.x / 4, tr = (threadIdx.x % 4) * 8;  // the transposed write: a column, 8 rows
    for (int c0 = 0; c0 < cols; c0 += QCOLS) {
        int c = c0 + cc;
        if (col_amax && threadIdx.x < QCOLS) cmax[threadIdx.x] = 0;
        if (col_amax) __syncthreads();
        float v[8] = { 0 }, raw[8] = { 0 };
        if (r < rows && c < cols) {
            source_load8<OP>(v, in, r, c, cols, s_mean[j], s_rstd[j]);
            union { fp8 b[8]; uint2 u; } q;
            for (int k = 0; k < 8; k++) q.b[k] = quantize_one(v[k], s_scale[j], f);
            if (codes) *(uint2 *)(codes + (size_t)r * cols + c) = q.u;
            for (int k = 0; k < 8; k++) tile[cc + k][j] = q.b[k];
            if (col_amax || col_partial) load8(raw, in.x + (size_t)r * cols + c);
        }
        if (col_amax) {  // the warp's 4 rows of each column first (lanes 8 apart), then the 8 warps
            for (int k = 0; k < 8; k++) {
                float v = r < rows && c < cols ? fabsf(raw[k] * row_scale[r]) : 0.0f;
                v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 8));
                v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 16));
                if (lane < 8) atomicMax(&cmax[cc + k], __float_as_uint(v));
            }
        }
        if (col_partial) for (int k = 0; k < 8; k++) csum[j][cc + k] = raw[k];
        __syncthreads();
        if (codes_t && c0 + tc < cols && r0 + tr < rows)
            *(uint2 *)(codes_t + (size_t)(c0 + tc) * rows + r0 + tr) = *(const uint2 *)&tile[tc][tr];
        if (threadIdx.x < QCOLS && c0 + threadIdx.x < cols) {
            if (col_amax) atomicMax(col_amax + c0 + threadIdx.x, cmax[threadIdx.x]);
            if (col_partial) {
                float s = 0.0f;
                for (int k = 0; k < QROWS; k++) s += csum[k][threadIdx.x];
                col_partial[(size_t)blockIdx.x * cols + c0 + threadIdx.x] = s;
            }
        }
        __syncthreads();
    }
}

// codes_t (cols, rows) = the codes of x * row_scale quantized per column, through 32 x 32 tiles
__global__ void quantize_cols_t_kernel(fp8 *codes_t, float *scales, const bf16 *x, const float *row_scale, const unsigned *amax,
                                       int rows, int cols, Format f) {
    __shared__ fp8 tile[32][33];
    int r0 = blockIdx.y * 32, c0 = blockIdx.x * 32, c = c0 + threadIdx.x;
    float s = c < cols ? __uint_as_float(amax[c]) / format_max(f) : 0.0f;
    if (blockIdx.y == 0 && threadIdx.y == 0 && c < cols) scales[c] = s;
    for (int j = threadIdx.y; j < 32; j += 8) {
        int r = r0 + j;
        if (r < rows && c < cols) tile[j][threadIdx.x] = quantize_one(__bfloat162float(x[(size_t)r * cols + c]) * row_scale[r], s, f);
    }
    __syncthreads();
    for (int j = threadIdx.y; j < 32; j += 8) {
        int cc = c0 + j, r = r0 + threadIdx.x;
        if (cc < cols && r < rows) codes_t[(size_t)cc * rows + r] = tile[threadIdx.x][j];
    }
}

// grad (rows, cols) *= f'(W / s_w): the DGE correction of the weight gradient (SPEC.md 4)
__global__ void dge_scale_kernel(float *grad, const bf16 *W, const float *scales, int rows, int cols, Format f, float k) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * cols) return;
    float s = scales[i / cols];
    grad[i] *= dge_derivative(s == 0.0f ? 0.0f : __bfloat162float(W[i]) / s, f, k);
}

static void check_scaled(Format f, const char *who) {
    if (format_max(f) == 0.0f) die("%s: %s is not a scaled format", who, format_name(f));
}

// the source quantized per row: codes (rows, cols) and / or codes_t (cols, rows), scales (rows).
// Optional, from the same pass: col_amax (cols, zeroed here), the column absmax of x * row_scale,
// for quantize_cols_t; col_partial (ceil(rows / 32), cols), partial column sums of x, for sum_rows.
static void quantize_rows(fp8 *codes, fp8 *codes_t, float *scales, const RowSource *src, int rows, int cols, Format f,
                          unsigned *col_amax, const float *row_scale, float *col_partial, cudaStream_t st) {
    check_scaled(f, "quantize_rows");
    if (cols % 8 != 0 || (codes_t && rows % 8 != 0)) die("quantize_rows: %d x %d is not a multiple of 8", rows, cols);
    if (col_amax) CUDA_CHECK(cudaMemsetAsync(col_amax, 0, cols * sizeof(unsigned), st));
    int blocks = ceil_div(rows, QROWS);
    switch (src->op) {
        case ROWS_PLAIN: quantize_rows_kernel<ROWS_PLAIN><<<blocks, 256, 0, st>>>(codes, codes_t, scales, *src, rows, cols, f, col_amax, row_scale, col_partial); break;
        case ROWS_NORM: quantize_rows_kernel<ROWS_NORM><<<blocks, 256, 0, st>>>(codes, codes_t, scales, *src, rows, cols, f, col_amax, row_scale, col_partial); break;
        case ROWS_GELU: quantize_rows_kernel<ROWS_GELU><<<blocks, 256, 0, st>>>(codes, codes_t, scales, *src, rows, cols, f, col_amax, row_scale, col_partial); break;
        default: quantize_rows_kernel<ROWS_SWIGLU><<<blocks, 256, 0, st>>>(codes, codes_t, scales, *src, rows, cols, f, col_amax, row_scale, col_partial); break;
    }
    CUDA_CHECK(cudaGetLastError());
}

// codes_t (cols, rows), scales (cols) of x (rows, cols) * row_scale (rows), per column, with
// amax the column absmax that quantize_rows computed
static void quantize_cols_t(fp8 *codes_t, float *scales, const unsigned *amax, const bf16 *x, const float *row_scale, int rows,
                            int cols, Format f, cudaStream_t st) {
    check_scaled(f, "quantize_cols_t");
    quantize_cols_t_kernel<<<dim3(ceil_div(cols, 32), ceil_div(rows, 32)), dim3(32, 8), 0, st>>>(codes_t, scales, x, row_scale,
                                                                                                  amax, rows, cols, f);
    CUDA_CHECK(cudaGetLastError());
}

static RowSource rows_plain(const bf16 *x, const float *col_scale) {
    RowSource s; memset(&s, 0, sizeof(s));
    s.op = ROWS_PLAIN; s.x = x; s.col_scale = col_scale;
    return s;
}
static RowSource rows_norm(const bf16 *x, const bf16 *w, const bf16 *b, float *mean, float *rstd, float eps, bf16 *out) {
    RowSource s; memset(&s, 0, sizeof(s));
    s.op = ROWS_NORM; s.x = x; s.w = w; s.b = b; s.mean = mean; s.rstd = rstd; s.eps = eps; s.out = out;
    return s;
}
static RowSource rows_act(int op, const bf16 *x, bf16 *out) {
    RowSource s; memset(&s, 0, sizeof(s));
    s.op = op; s.x = x; s.out = out;
    return s;
}

static void dge_scale(float *grad, const bf16 *W, const float *scales, int rows, int cols, Format f, float k, cudaStream_t st) {
    dge_scale_kernel<<<ceil_div((long long)rows * cols, 256), 256, 0, st>>>(grad, W, scales, rows, cols, f, k);
    CUDA_CHECK(cudaGetLastError());
}

#endif
