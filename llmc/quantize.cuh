// defines: fp8, fp8_type, quantize_rows, quantize_cols_t, transpose_bytes, dge_scale
// Vector-wise absmax quantization on the GPU (SPEC.md 4), bit-identical to the CPU's
// quantize_matrix: s = absmax / max of the format, codes = round(x / s) by the rules of quant.h,
// stored as FP8 bytes (4-bit codes are exact in E4M3, which is how Hopper's FP8 tensor cores run
// FP4). Per row (tokens of X, output channels of W, tokens of the dgrad gradient) or per column
// (output channels of the wgrad gradient, written transposed: the FP8 GEMMs are TN only).
// test/test_quant_gpu checks every kernel against the CPU.
#ifndef LLMC_QUANTIZE_CUH
#define LLMC_QUANTIZE_CUH

#include <cuda_fp8.h>
#include "cuda_common.cuh"
#include "quant.h"

typedef __nv_fp8_storage_t fp8;

// the cuBLASLt type of a format's FP8 bytes
static cudaDataType fp8_type(Format f) { return f == FMT_E5M2 ? CUDA_R_8F_E5M2 : CUDA_R_8F_E4M3; }

// the FP8 byte of a code (already on the format's grid, so the conversion is exact)
__device__ inline fp8 code_byte(float code, Format f) {
    return __nv_cvt_float_to_fp8(code, __NV_SATFINITE, f == FMT_E5M2 ? __NV_E5M2 : __NV_E4M3);
}

__device__ inline fp8 quantize_one(float x, float s, Format f) { return code_byte(s == 0.0f ? 0.0f : quant_round(x / s, f), f); }

// one warp per row of x (rows, cols), each element times col_scale[col] when given (the dgrad
// gradient's folded weight scale): codes (rows, cols), scales (rows)
__global__ void quantize_rows_kernel(fp8 *codes, float *scales, const bf16 *x, const float *col_scale, int rows, int cols,
                                     Format f) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const bf16 *xr = x + (size_t)row * cols;
    float amax = 0.0f;
    for (int i = lane; i < cols; i += 32) amax = fmaxf(amax, fabsf(__bfloat162float(xr[i]) * (col_scale ? col_scale[i] : 1.0f)));
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    float s = amax / format_max(f);
    if (lane == 0) scales[row] = s;
    fp8 *cr = codes + (size_t)row * cols;
    for (int i = lane; i < cols; i += 32) cr[i] = quantize_one(__bfloat162float(xr[i]) * (col_scale ? col_scale[i] : 1.0f), s, f);
}

// absmax of each column of x * row_scale[row], as float bits (non-negative floats order like
// their bits, so atomicMax on them is exact and order-free); amax zeroed by the caller
__global__ void column_absmax_kernel(unsigned *amax, const bf16 *x, const float *row_scale, int rows, int cols) {
    __shared__ float m[8][33];
    int c = blockIdx.x * 32 + threadIdx.x;
    float v = 0.0f;
    if (c < cols) {
        for (int r = blockIdx.y * 256 + threadIdx.y; r < min(rows, (int)blockIdx.y * 256 + 256); r += 8)
            v = fmaxf(v, fabsf(__bfloat162float(x[(size_t)r * cols + c]) * row_scale[r]));
    }
    m[threadIdx.y][threadIdx.x] = v;
    __syncthreads();
    if (threadIdx.y != 0 || c >= cols) return;
    for (int k = 1; k < 8; k++) v = fmaxf(v, m[k][threadIdx.x]);
    atomicMax(amax + c, __float_as_uint(v));
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

// out (batch, cols, rows) = in (batch, rows, cols) transposed, bytes, through 32 x 32 tiles
__global__ void transpose_bytes_kernel(fp8 *out, const fp8 *in, int rows, int cols) {
    __shared__ fp8 tile[32][33];
    size_t off = (size_t)blockIdx.z * rows * cols;
    int r0 = blockIdx.y * 32, c0 = blockIdx.x * 32;
    for (int j = threadIdx.y; j < 32; j += 8) {
        int r = r0 + j, c = c0 + threadIdx.x;
        if (r < rows && c < cols) tile[j][threadIdx.x] = in[off + (size_t)r * cols + c];
    }
    __syncthreads();
    for (int j = threadIdx.y; j < 32; j += 8) {
        int c = c0 + j, r = r0 + threadIdx.x;
        if (c < cols && r < rows) out[off + (size_t)c * rows + r] = tile[threadIdx.x][j];
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

// codes (rows, cols), scales (rows) of x (rows, cols) [* col_scale (cols)], per row
static void quantize_rows(fp8 *codes, float *scales, const bf16 *x, const float *col_scale, int rows, int cols, Format f,
                          cudaStream_t st) {
    check_scaled(f, "quantize_rows");
    quantize_rows_kernel<<<ceil_div(rows, 8), 256, 0, st>>>(codes, scales, x, col_scale, rows, cols, f);
    CUDA_CHECK(cudaGetLastError());
}

// codes_t (cols, rows), scales (cols) of x (rows, cols) * row_scale (rows), per column;
// amax: cols unsigned of scratch
static void quantize_cols_t(fp8 *codes_t, float *scales, unsigned *amax, const bf16 *x, const float *row_scale, int rows,
                            int cols, Format f, cudaStream_t st) {
    check_scaled(f, "quantize_cols_t");
    CUDA_CHECK(cudaMemsetAsync(amax, 0, cols * sizeof(unsigned), st));
    column_absmax_kernel<<<dim3(ceil_div(cols, 32), ceil_div(rows, 256)), dim3(32, 8), 0, st>>>(amax, x, row_scale, rows, cols);
    quantize_cols_t_kernel<<<dim3(ceil_div(cols, 32), ceil_div(rows, 32)), dim3(32, 8), 0, st>>>(codes_t, scales, x, row_scale,
                                                                                                  amax, rows, cols, f);
    CUDA_CHECK(cudaGetLastError());
}

static void transpose_bytes(fp8 *out, const fp8 *in, int rows, int cols, int batch, cudaStream_t st) {
    transpose_bytes_kernel<<<dim3(ceil_div(cols, 32), ceil_div(rows, 32), batch), dim3(32, 8), 0, st>>>(out, in, rows, cols);
    CUDA_CHECK(cudaGetLastError());
}

static void dge_scale(float *grad, const bf16 *W, const float *scales, int rows, int cols, Format f, float k, cudaStream_t st) {
    dge_scale_kernel<<<ceil_div((long long)rows * cols, 256), 256, 0, st>>>(grad, W, scales, rows, cols, f, k);
    CUDA_CHECK(cudaGetLastError());
}

#endif
