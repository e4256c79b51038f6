// defines: DgeRanges, grad_sumsq, adamw_update
// AdamW on BF16 weights with stochastic rounding (FP32 m and v), or on an FP32 master copy when
// one is kept; and the deterministic sum of squares for the global gradient norm, whose pass also
// applies DGE to the step's 4-bit weight gradients (no pass of its own over them).
#ifndef LLMC_ADAMW_CUH
#define LLMC_ADAMW_CUH

#include "cuda_common.cuh"
#include "rand.h"
#include "quant.h"

#define SUMSQ_BLOCKS 1024

// DGE (SPEC.md 4) in place on parts of the gradient buffer: g[i] *= f'(W[i] / s_w[row]) for i in
// [lo, lo + len) of a range, row (i - lo) / K; W the weight buffer laid out like the gradients
#define MAX_DGE_RANGES 4
typedef struct {
    int n;
    float k;
    const bf16 *W;
    struct { size_t lo; unsigned len, K; const float *scales; Format f; } r[MAX_DGE_RANGES];
} DgeRanges;

// the range of dge holding element i, or -1
__device__ inline int dge_range(const DgeRanges &dge, size_t i) {
    for (int j = 0; j < dge.n; j++)
        if (i - dge.r[j].lo < dge.r[j].len) return j;  // unsigned: below lo wraps past len
    return -1;
}

// g[i] (DGE applied in place where it belongs), element by element
__device__ inline float dge_one(float *g, size_t i, const DgeRanges &dge) {
    float v = g[i];
    int j = dge_range(dge, i);
    if (j < 0) return v;
    unsigned o = (unsigned)(i - dge.r[j].lo);
    v *= dge_factor(__bfloat162float(dge.W[i]), dge.r[j].scales[o / dge.r[j].K], dge.r[j].f, dge.k);
    g[i] = v;
    return v;
}

// v *= the DGE factors of the 4 BF16 weights in w, whose row scale is s
__device__ inline void dge4(float4 *v, uint2 w, float s, Format f, float k) {
    float2 w01 = bf16x2_floats(w.x), w23 = bf16x2_floats(w.y);
    v->x *= dge_factor(w01.x, s, f, k); v->y *= dge_factor(w01.y, s, f, k);
    v->z *= dge_factor(w23.x, s, f, k); v->w *= dge_factor(w23.y, s, f, k);
}

// 4 elements a thread: 16-byte loads of g, 8 bytes of W, one range lookup and one row scale for
// the 4. Element by element, with the lookups and powf, the pass was compute-bound at 6.1 ms a
// step at LLaMA 928M; now 3.1 (~2.3 would be its bytes at bandwidth). A group of 4 that
// straddles a range's or a row's end, or the buffer's, goes element by element (a group whose
// first and last elements share a range lies inside it: a range, a weight matrix, holds at least
// 8 entries).
__global__ void sumsq_partial_kernel(float *partial, float *g, size_t n, DgeRanges dge) {
    float s = 0.0f;
    for (size_t c = (size_t)blockIdx.x * blockDim.x + threadIdx.x; 4 * c < n; c += (size_t)gridDim.x * blockDim.x) {
        size_t i = 4 * c;
        int j = dge_range(dge, i);
        unsigned o = j < 0 ? 0 : (unsigned)(i - dge.r[j].lo);
        if (i + 4 <= n && dge_range(dge, i + 3) == j && (j < 0 || o % dge.r[j].K + 4 <= dge.r[j].K)) {
            float4 v = *(float4 *)(g + i);
            if (j >= 0) {
                uint2 raw = *(const uint2 *)(dge.W + i);
                float sc = dge.r[j].scales[o / dge.r[j].K];
                Format f = dge.r[j].f;
                if (f == FMT_E2M1) dge4(&v, raw, sc, FMT_E2M1, dge.k);  // the recipe's format: its grid folds into constants
                else dge4(&v, raw, sc, f, dge.k);
                *(float4 *)(g + i) = v;
            }
            s += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        } else {
            for (size_t e = i; e < i + 4 && e < n; e++) { float v = dge_one(g, e, dge); s += v * v; }
        }
    }
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void sumsq_final_kernel(float *out, const float *partial, int n) {
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
    s = block_sum(s);
    if (threadIdx.x == 0) *out = s;
}

// *out (device) = sum of g^2, in a fixed order, after DGE in place on dge's ranges (dge->n may be
// 0); scratch: SUMSQ_BLOCKS floats. (A grid of one wave of resident blocks took the pass from
// 3.13 to 2.96 ms at LLaMA 928M, 0.2% of the step: not worth an occupancy query's state.)
static void grad_sumsq(float *out, float *g, size_t n, const DgeRanges *dge, float *scratch, cudaStream_t s) {
    sumsq_partial_kernel<<<SUMSQ_BLOCKS, 256, 0, s>>>(scratch, g, n, *dge);
    sumsq_final_kernel<<<1, 1024, 0, s>>>(out, scratch, SUMSQ_BLOCKS);
    CUDA_CHECK(cudaGetLastError());
}

// rounds x to BF16 up or down with probability given by the distance: unbiased on average
__device__ inline bf16 bf16_stochastic(float x, uint64_t bits) {
    uint32_t u = __float_as_uint(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return __float2bfloat16(x);  // inf, NaN
    u += (uint32_t)(bits & 0xffffu);
    return __ushort_as_bfloat16((unsigned short)(u >> 16));
}

// one element per thread over a contiguous range of the parameter buffer; decay applies to the
// whole range (the caller splits the buffer by tensor). first: the range's offset in its tensor,
// so that stochastic rounding draws the same numbers however the tensor is sharded.
__global__ void adamw_kernel(bf16 *p, float *master, const float *g, float *m, float *v, size_t n, float lr, float b1,
                             float b2, float c1, float c2, float eps, float wd, float gscale, uint64_t key, size_t first) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gr = g[i] * gscale;
    float mi = b1 * m[i] + (1.0f - b1) * gr;
    float vi = b2 * v[i] + (1.0f - b2) * gr * gr;
    m[i] = mi; v[i] = vi;
    float w = master ? master[i] : __bfloat162float(p[i]);
    w -= lr * ((mi / c1) / (sqrtf(vi / c2) + eps) + wd * w);
    if (master) { master[i] = w; p[i] = __float2bfloat16(w); }
    else p[i] = bf16_stochastic(w, rng_hash(key, first + i));
}

static void adamw_update(bf16 *p, float *master, const float *g, float *m, float *v, size_t n, float lr, float b1, float b2,
                         int t, float eps, float wd, float gscale, uint64_t key, size_t first, cudaStream_t s) {
    if (n == 0) return;
    float c1 = 1.0f - powf(b1, (float)t), c2 = 1.0f - powf(b2, (float)t);
    adamw_kernel<<<ceil_div((long long)n, 256), 256, 0, s>>>(p, master, g, m, v, n, lr, b1, b2, c1, c2, eps, wd, gscale, key, first);
    CUDA_CHECK(cudaGetLastError());
}

#endif
