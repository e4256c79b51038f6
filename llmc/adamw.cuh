// defines: DgeRanges, grad_sumsq, AdamW, adamw_update
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

typedef struct { float lr, b1, b2, c1, c2, eps, wd, gscale; uint64_t key; size_t first; } AdamW;

// element i of the range: its moments m, v updated from gradient g, and its new weight from w
// (the master copy's, or the BF16 weight's); h.first + i draws the element's stochastic rounding
__device__ inline float adamw_step(float g, float *m, float *v, float w, const AdamW &h) {
    float gr = g * h.gscale;
    *m = h.b1 * *m + (1.0f - h.b1) * gr;
    *v = h.b2 * *v + (1.0f - h.b2) * gr * gr;
    return w - h.lr * ((*m / h.c1) / (sqrtf(*v / h.c2) + h.eps) + h.wd * w);
}
__device__ inline bf16 adamw_round(float w, const float *master, const AdamW &h, size_t i) {
    return master ? __float2bfloat16(w) : bf16_stochastic(w, rng_hash(h.key, h.first + i));
}

// Over a contiguous range of the parameter buffer; decay applies to the whole range (the caller
// splits the buffer by tensor). h.first: the range's offset in its tensor, so that stochastic
// rounding draws the same numbers however the tensor is sharded. 4 elements a thread, with
// 16-byte accesses to g, m, v and the master copy and 8 bytes of BF16 weights where the range's
// pointers allow them (vec; one element a thread with 4-byte accesses ran at 2.6 TB/s), else
// (and for the range's last n % 4) element by element.
__global__ void adamw_kernel(bf16 *p, float *master, const float *g, float *m, float *v, size_t n, AdamW h, int vec) {
    size_t i = 4 * ((size_t)blockIdx.x * blockDim.x + threadIdx.x);
    if (i >= n) return;
    if (vec && i + 4 <= n) {
        float4 g4 = *(const float4 *)(g + i), m4 = *(const float4 *)(m + i), v4 = *(const float4 *)(v + i), w4;
        if (master) w4 = *(const float4 *)(master + i);
        else {
            uint2 raw = *(const uint2 *)(p + i);
            float2 w01 = bf16x2_floats(raw.x), w23 = bf16x2_floats(raw.y);
            w4 = make_float4(w01.x, w01.y, w23.x, w23.y);
        }
        float gk[4] = { g4.x, g4.y, g4.z, g4.w }, mk[4] = { m4.x, m4.y, m4.z, m4.w }, vk[4] = { v4.x, v4.y, v4.z, v4.w };
        float wk[4] = { w4.x, w4.y, w4.z, w4.w };
        alignas(8) bf16 out[4];
        for (int k = 0; k < 4; k++) {
            wk[k] = adamw_step(gk[k], &mk[k], &vk[k], wk[k], h);
            out[k] = adamw_round(wk[k], master, h, i + k);
        }
        *(float4 *)(m + i) = make_float4(mk[0], mk[1], mk[2], mk[3]);
        *(float4 *)(v + i) = make_float4(vk[0], vk[1], vk[2], vk[3]);
        if (master) *(float4 *)(master + i) = make_float4(wk[0], wk[1], wk[2], wk[3]);
        *(uint2 *)(p + i) = *(const uint2 *)out;
        return;
    }
    for (size_t e = i; e < i + 4 && e < n; e++) {
        float w = adamw_step(g[e], &m[e], &v[e], master ? master[e] : __bfloat162float(p[e]), h);
        if (master) master[e] = w;
        p[e] = adamw_round(w, master, h, e);
    }
}

static void adamw_update(bf16 *p, float *master, const float *g, float *m, float *v, size_t n, float lr, float b1, float b2,
                         int t, float eps, float wd, float gscale, uint64_t key, size_t first, cudaStream_t s) {
    if (n == 0) return;
    AdamW h = { lr, b1, b2, 1.0f - powf(b1, (float)t), 1.0f - powf(b2, (float)t), eps, wd, gscale, key, first };
    int vec = ((uintptr_t)p % 8 | (uintptr_t)master % 16 | (uintptr_t)g % 16 | (uintptr_t)m % 16 | (uintptr_t)v % 16) == 0;
    adamw_kernel<<<ceil_div(ceil_div((long long)n, 4), 256), 256, 0, s>>>(p, master, g, m, v, n, h, vec);
    CUDA_CHECK(cudaGetLastError());
}

#endif
