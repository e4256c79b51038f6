// defines: CUDA_CHECK, CUBLAS_CHECK, bf16, ceil_div, cuda_malloc, cuda_free, cuda_peak_bytes,
//          cuda_upload, cuda_download, warp_sum, warp_max, block_sum, block_max, reduce_rows_block, sum_rows, exp2_fast,
//          bf16x2_floats, unpack8, load8, store_bf16, load_bf16
// What every CUDA file of the project needs: error checks that end the run with one line, the
// BF16 type, and a deterministic block reduction.
#ifndef LLMC_CUDA_COMMON_CUH
#define LLMC_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cublasLt.h>
#include <cublas_v2.h>
#include "utils.h"

typedef __nv_bfloat16 bf16;

#define CUDA_CHECK(call) do { cudaError_t err_ = (call); \
    if (err_ != cudaSuccess) die("CUDA %s at %s:%d", cudaGetErrorString(err_), __FILE__, __LINE__); } while (0)
#define CUBLAS_CHECK(call) do { cublasStatus_t st_ = (call); \
    if (st_ != CUBLAS_STATUS_SUCCESS) die("cuBLAS status %d at %s:%d", (int)st_, __FILE__, __LINE__); } while (0)

static inline int ceil_div(long long a, long long b) { return (int)((a + b - 1) / b); }

// every device allocation goes through these two, which keep count for the peak-memory report
static size_t cuda_bytes, cuda_peak_bytes;

static void *cuda_malloc(size_t bytes) {
    void *p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes > 0 ? bytes : 1);
    if (err != cudaSuccess) die("out of GPU memory allocating %zu bytes (%s)", bytes, cudaGetErrorString(err));
    cuda_bytes += bytes;
    if (cuda_bytes > cuda_peak_bytes) cuda_peak_bytes = cuda_bytes;
    return p;
}

static void cuda_free(void *p, size_t bytes) {
    CUDA_CHECK(cudaFree(p));
    cuda_bytes -= bytes;
}

static void cuda_upload(void *dst, const void *src, size_t bytes) { CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice)); }
static void cuda_download(void *dst, const void *src, size_t bytes) { CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost)); }

// sum of v (float or double) over the warp, returned to every lane
template <typename T> __device__ inline T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ inline float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// sum (max: floats) of v over the block (blockDim.x a multiple of 32, at most 1024), returned to
// every thread; fixed order, so the result is the same run after run
template <bool MAX, typename T> __device__ inline T block_reduce(T v) {
    __shared__ T partial[32];
    if constexpr (MAX) v = warp_max(v); else v = warp_sum(v);
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    __syncthreads();  // partial may still be read by a previous call
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < nwarps ? partial[lane] : MAX ? (T)-INFINITY : (T)0;
    if constexpr (MAX) return warp_max(v); else return warp_sum(v);
}
template <typename T> __device__ inline T block_sum(T v) { return block_reduce<false>(v); }
__device__ inline float block_max(float v) { return block_reduce<true>(v); }

// 2^y by the hardware's approximation (2 ulp), one instruction: results below 2^-126 flush to 0,
// past 2^128 they are inf. (__expf adds a multiply, and a range test and two more to keep
// subnormal results, which nothing here needs.)
__device__ inline float exp2_fast(float y) {
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(y));
    return r;
}

// the two BF16 values of a 32-bit word (the low half first) as floats: a shift and a mask, one
// instruction each (__bfloat1622float2 takes two a value, a byte permute and a shift)
__device__ inline float2 bf16x2_floats(uint32_t u) { return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u)); }

// the 8 BF16 values of 16 bytes as floats
__device__ inline void unpack8(float *f, uint4 raw) {
    const uint32_t h[4] = { raw.x, raw.y, raw.z, raw.w };
    for (int k = 0; k < 4; k++) { float2 v = bf16x2_floats(h[k]); f[2 * k] = v.x; f[2 * k + 1] = v.y; }
}
// 8 BF16 values as floats in one 16-byte access (p 16-byte aligned)
__device__ inline void load8(float *f, const bf16 *p) { unpack8(f, *(const uint4 *)p); }
// W (8, 4 or 1) floats as BF16 in one 16-, 8- or 2-byte access (p aligned to it)
template <int W> __device__ inline void store_bf16(bf16 *p, const float *f) {
    if constexpr (W == 1) {
        *p = __float2bfloat16(f[0]);
    } else {
        alignas(16) __nv_bfloat162 h[W / 2];
        for (int k = 0; k < W / 2; k++) h[k] = __floats2bfloat162_rn(f[2 * k], f[2 * k + 1]);
        if constexpr (W == 8) *(uint4 *)p = *(const uint4 *)h;
        else *(uint2 *)p = *(const uint2 *)h;
    }
}
// W (8 or 1) BF16 values as floats
template <int W> __device__ inline void load_bf16(float *f, const bf16 *p) {
    if constexpr (W == 8) load8(f, p);
    else f[0] = __bfloat162float(*p);
}

// sum_r partial[r, c] (MAX: max_r partial[r, c], of values >= 0) over a (rows, cols) matrix of
// partials, rows ld apart, for column c = c0 + threadIdx.x, by a 32 x 32 block: each thread a fixed
// stride of rows, then the 32 results in order; thread (x, 0) returns it
template <int MAX>
__device__ inline float reduce_rows_block(const float *partial, int rows, int cols, int ld, int c0) {
    __shared__ float acc[32][33];
    int c = c0 + threadIdx.x;
    float s = 0.0f;
    if (c < cols) {
        #pragma unroll 8
        for (int r = threadIdx.y; r < rows; r += 32) s = MAX ? fmaxf(s, partial[(size_t)r * ld + c]) : s + partial[(size_t)r * ld + c];
    }
    acc[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0)
        for (int k = 1; k < 32; k++) s = MAX ? fmaxf(s, acc[k][threadIdx.x]) : s + acc[k][threadIdx.x];
    __syncthreads();  // acc is free again
    return s;
}
// out[c] += the column sums, a block per 32 columns
__global__ void sum_rows_kernel(float *out, const float *partial, int rows, int cols, int ld) {
    float s = reduce_rows_block<0>(partial, rows, cols, ld, blockIdx.x * 32);
    int c = blockIdx.x * 32 + threadIdx.x;
    if (threadIdx.y == 0 && c < cols) out[c] += s;
}

static void sum_rows(float *out, const float *partial, int rows, int cols, int ld, cudaStream_t stream) {
    sum_rows_kernel<<<ceil_div(cols, 32), dim3(32, 32), 0, stream>>>(out, partial, rows, cols, ld);
    CUDA_CHECK(cudaGetLastError());
}

#endif
