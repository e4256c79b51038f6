// defines: quantize_rows
// Vector-wise absmax quantization on the GPU (SPEC.md 4): one scale per row, s = absmax / max of
// the format, codes = round(x / s) with the rules of quant.h, stored as FP8 bytes (4-bit codes
// are exact in E4M3, which is how Hopper's FP8 tensor cores run FP4). Bit-identical to the CPU's
// quantize_matrix; test/test_quant_gpu checks it.
#ifndef LLMC_QUANTIZE_CUH
#define LLMC_QUANTIZE_CUH

#include <cuda_fp8.h>
#include "cuda_common.cuh"
#include "quant.h"

// the FP8 byte of a code (already on the format's grid, so the conversion is exact)
__device__ inline __nv_fp8_storage_t code_byte(float code, Format f) {
    return __nv_cvt_float_to_fp8(code, __NV_SATFINITE, f == FMT_E5M2 ? __NV_E5M2 : __NV_E4M3);
}

// one warp per row of x (rows, cols): codes (rows, cols) FP8 bytes, scales (rows)
__global__ void quantize_rows_kernel(__nv_fp8_storage_t *codes, float *scales, const bf16 *x, int rows, int cols, Format f) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const bf16 *xr = x + (size_t)row * cols;
    float amax = 0.0f;
    for (int i = lane; i < cols; i += 32) amax = fmaxf(amax, fabsf(__bfloat162float(xr[i])));
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    float s = amax / format_max(f);
    if (lane == 0) scales[row] = s;
    __nv_fp8_storage_t *cr = codes + (size_t)row * cols;
    for (int i = lane; i < cols; i += 32) {
        float c = s == 0.0f ? 0.0f : quant_round(__bfloat162float(xr[i]) / s, f);
        cr[i] = code_byte(c, f);
    }
}

static void quantize_rows(__nv_fp8_storage_t *codes, float *scales, const bf16 *x, int rows, int cols, Format f, cudaStream_t st) {
    if (format_max(f) == 0.0f) die("quantize_rows: %s is not a scaled format", format_name(f));
    quantize_rows_kernel<<<ceil_div(rows, 8), 256, 0, st>>>(codes, scales, x, rows, cols, f);
    CUDA_CHECK(cudaGetLastError());
}

#endif
