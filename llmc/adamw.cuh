// defines: Dge, DgeRanges, grad_sumsq, AdamW, adamw_update
// AdamW on BF16 weights with stochastic rounding (FP32 m and v), or on an FP32 master copy when
// one is kept; and the deterministic sum of squares for the global gradient norm. DGE (SPEC.md 4)
// scales the step's 4-bit weight gradients in both, as they are read: the norm is the corrected
// gradients', and the gradient buffer is never written back (the norm's pass that stored them
// took 3.1 ms a step at LLaMA 928M, 2.7 without the store; see grad_sumsq for what it takes now).
#ifndef LLMC_ADAMW_CUH
#define LLMC_ADAMW_CUH

#include "cuda_common.cuh"
#include "rand.h"
#include "quant.h"

#define SUMSQ_BLOCKS 1024

// DGE on one tensor's gradients: g[e] *= f'(W[e] / scales[e / K]) for the tensor's element e (its
// rows K long); scales NULL: none
typedef struct { const float *scales; unsigned K; Format f; float k; } Dge;

// g[0..3], the gradients of the tensor's elements e .. e + 3 (e in row r), times their DGE
// factors; w their 4 BF16 weights. One row scale for the 4 where they share a row; E2M1, the
// recipe's format, with its grid folded into constants.
__device__ inline void dge4_at(float *g, uint2 w, const Dge &d, unsigned e, unsigned r) {
    float2 w01 = bf16x2_floats(w.x), w23 = bf16x2_floats(w.y);
    const float wk[4] = { w01.x, w01.y, w23.x, w23.y };
    if (e - r * d.K + 4 <= d.K) {
        float s = d.scales[r];
        if (d.f == FMT_E2M1) for (int k = 0; k < 4; k++) g[k] *= dge_factor(wk[k], s, FMT_E2M1, d.k);
        else for (int k = 0; k < 4; k++) g[k] *= dge_factor(wk[k], s, d.f, d.k);
    } else {
        for (int k = 0; k < 4; k++) g[k] *= dge_factor(wk[k], d.scales[(e + k) / d.K], d.f, d.k);
    }
}
__device__ inline void dge4(float *g, uint2 w, const Dge &d, unsigned e) { dge4_at(g, w, d, e, e / d.K); }
__device__ inline float dge1(float g, bf16 w, const Dge &d, unsigned e) {
    return g * dge_factor(__bfloat162float(w), d.scales[e / d.K], d.f, d.k);
}

// the parts of the gradient buffer that take DGE, for the norm: [lo, lo + len), the tensor's
// element lo + e at e; W the weight buffer, laid out like the gradients
#define MAX_DGE_RANGES 4
typedef struct {
    int n;
    const bf16 *W;
    struct { size_t lo; unsigned len; Dge d; } r[MAX_DGE_RANGES];
} DgeRanges;

// The norm's pass walks the buffer as stretches, in order: each DGE range, and the gradients
// before, between and after them (d.scales NULL). Within a stretch, its aligned groups of 4
// (16-byte loads of g, 8 bytes of W); the at most 3 elements at each end that break a group, one
// at a time, in the first block. In a DGE range a thread takes two groups at a time with the next
// two's loads in flight, and a group's row comes from a product with 2^64 / K rounded up (exact
// for offsets below 2^32), not a division. LLaMA 928M, ms a step: 2.71 with a range lookup, a
// division and the factor's log2f in full per group, each group's loads waited for; 1.98 so
// (bf16's norm without DGE: 1.33).
#define SUMSQ_SEGS (2 * MAX_DGE_RANGES + 1)
typedef struct { size_t lo, hi; Dge d; } SumsqSeg;
typedef struct { int n; const bf16 *W; SumsqSeg s[SUMSQ_SEGS]; } SumsqPlan;

// the loads of groups c and c + nt (those below b) of gradients g and weights W
__device__ inline void pair_fetch(float4 *v, uint2 *w, const float *g, const bf16 *W, size_t c, size_t nt, size_t b) {
    #pragma unroll
    for (int u = 0; u < 2; u++)
        if (c + u * nt < b) {
            v[u] = *(const float4 *)(g + 4 * (c + u * nt));
            w[u] = *(const uint2 *)(W + 4 * (c + u * nt));
        }
}
// s += their gradients' squares, each times its DGE factor (kdiv: 2^64 / K rounded up)
__device__ inline void pair_sumsq(float &s, const float4 *v, const uint2 *w, const SumsqSeg &sg, uint64_t kdiv, size_t c, size_t nt,
                                  size_t b) {
    #pragma unroll
    for (int u = 0; u < 2; u++)
        if (c + u * nt < b) {
            unsigned e = (unsigned)(4 * (c + u * nt) - sg.lo);
            float x[4] = { v[u].x, v[u].y, v[u].z, v[u].w };
            dge4_at(x, w[u], sg.d, e, (unsigned)__umul64hi(e, kdiv));
            s += x[0] * x[0] + x[1] * x[1] + x[2] * x[2] + x[3] * x[3];
        }
}

__global__ void sumsq_partial_kernel(float *partial, const float *g, SumsqPlan p) {
    float s = 0.0f;
    size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x, nt = (size_t)gridDim.x * blockDim.x;
    for (int j = 0; j < p.n; j++) {
        const SumsqSeg sg = p.s[j];
        size_t a = (sg.lo + 3) / 4, b = sg.hi / 4;  // whole groups [a, b)
        if (!sg.d.scales) {
            for (size_t c = a + tid; c < b; c += nt) {
                float4 v = *(const float4 *)(g + 4 * c);
                s += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
            }
        } else {
            // pairs of groups c, c + nt: the next pair's loads in flight while this one's factors are
            // made (two named buffers: indexed by a variable, they would live in local memory)
            uint64_t kdiv = ~0ull / sg.d.K + 1;
            float4 va[2], vb[2];
            uint2 wa[2], wb[2];
            pair_fetch(va, wa, g, p.W, a + tid, nt, b);
            for (size_t c = a + tid; c < b; c += 4 * nt) {
                if (c + 2 * nt < b) pair_fetch(vb, wb, g, p.W, c + 2 * nt, nt, b);
                pair_sumsq(s, va, wa, sg, kdiv, c, nt, b);
                if (c + 2 * nt >= b) break;
                if (c + 4 * nt < b) pair_fetch(va, wa, g, p.W, c + 4 * nt, nt, b);
                pair_sumsq(s, vb, wb, sg, kdiv, c + 2 * nt, nt, b);
            }
        }
        size_t head = 4 * a < sg.hi ? 4 * a : sg.hi, tail = 4 * b > head ? 4 * b : head;  // [lo, head), [tail, hi)
        if (blockIdx.x == 0 && threadIdx.x < 6) {
            size_t e = threadIdx.x < 3 ? sg.lo + threadIdx.x : tail + threadIdx.x - 3;
            if (e < (threadIdx.x < 3 ? head : sg.hi)) {
                float v = sg.d.scales ? dge1(g[e], p.W[e], sg.d, (unsigned)(e - sg.lo)) : g[e];
                s += v * v;
            }
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

// *out (device) = sum of g^2 over g's n elements, in a fixed order, g times its DGE factor on
// dge's ranges (dge->n may be 0; ranges in any order, not overlapping); scratch: SUMSQ_BLOCKS floats
static void grad_sumsq(float *out, const float *g, size_t n, const DgeRanges *dge, float *scratch, cudaStream_t s) {
    SumsqPlan p;
    memset(&p, 0, sizeof(p));
    p.W = dge->W;
    int done[MAX_DGE_RANGES] = { 0 };
    for (size_t at = 0; at < n;) {  // the lowest range not yet taken, and the stretch before it
        int next = -1;
        for (int j = 0; j < dge->n; j++)
            if (!done[j] && (next < 0 || dge->r[j].lo < dge->r[next].lo)) next = j;
        size_t lo = next < 0 ? n : dge->r[next].lo;
        if (lo < at || lo > n || (next >= 0 && (dge->r[next].len > n - lo || dge->r[next].d.K < 2)))
            die("grad_sumsq: DGE range %d outside the buffer, overlapping another, or of rows shorter than 2", next);
        if (lo > at) p.s[p.n++] = (SumsqSeg){ at, lo, {} };
        if (next < 0) break;
        p.s[p.n++] = (SumsqSeg){ lo, lo + dge->r[next].len, dge->r[next].d };
        at = lo + dge->r[next].len;
        done[next] = 1;
    }
    sumsq_partial_kernel<<<SUMSQ_BLOCKS, 256, 0, s>>>(scratch, g, p);
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

// the step's hyper-parameters; sumsq: the gradients' squared norm on the device (NULL: no
// clipping), clip: the norm they are scaled down to above it; first: the range's offset in its
// tensor; dge: the tensor's (a 4-bit weight's gradients are corrected as they are read)
typedef struct { float lr, b1, b2, c1, c2, eps, wd, clip; const float *sumsq; uint64_t key; size_t first; Dge dge; } AdamW;

// the factor clipping scales the gradients by (the host's float arithmetic: the same bits)
__device__ inline float clip_factor(const AdamW &h) {
    if (!h.sumsq || h.clip <= 0.0f) return 1.0f;
    float norm = sqrtf(*h.sumsq);
    return norm > h.clip ? h.clip / norm : 1.0f;
}

// element i of the range: its moments m, v updated from gradient g (times the clipping factor
// gscale), and its new weight from w (the master copy's, or the BF16 weight's); h.first + i draws
// the element's stochastic rounding
__device__ inline float adamw_step(float g, float *m, float *v, float w, float gscale, const AdamW &h) {
    float gr = g * gscale;
    *m = h.b1 * *m + (1.0f - h.b1) * gr;
    *v = h.b2 * *v + (1.0f - h.b2) * gr * gr;
    return w - h.lr * ((*m / h.c1) / (sqrtf(*v / h.c2) + h.eps) + h.wd * w);
}
__device__ inline bf16 adamw_round(float w, const float *master, const AdamW &h, size_t i) {
    return master ? __float2bfloat16(w) : bf16_stochastic(w, rng_hash(h.key, h.first + i));
}

// Over a contiguous range of the parameter buffer; decay applies to the whole range (the caller
// splits the buffer by tensor). h.first: the range's offset in its tensor, so that stochastic
// rounding draws the same numbers however the tensor is sharded, and DGE finds its rows. 4
// elements a thread, with 16-byte accesses to g, m, v and the master copy and 8 bytes of BF16
// weights where the range's pointers allow them (vec; one element a thread with 4-byte accesses
// ran at 2.6 TB/s), else (and for the range's last n % 4) element by element.
__global__ void adamw_kernel(bf16 *p, float *master, const float *g, float *m, float *v, size_t n, AdamW h, int vec) {
    size_t i = 4 * ((size_t)blockIdx.x * blockDim.x + threadIdx.x);
    if (i >= n) return;
    float gscale = clip_factor(h);
    if (vec && i + 4 <= n) {
        float4 g4 = *(const float4 *)(g + i), m4 = *(const float4 *)(m + i), v4 = *(const float4 *)(v + i);
        // the BF16 weights: the update's without a master copy, DGE's in any case
        uint2 raw = master && !h.dge.scales ? make_uint2(0, 0) : *(const uint2 *)(p + i);
        float gk[4] = { g4.x, g4.y, g4.z, g4.w }, mk[4] = { m4.x, m4.y, m4.z, m4.w }, vk[4] = { v4.x, v4.y, v4.z, v4.w }, wk[4];
        if (master) {
            float4 w4 = *(const float4 *)(master + i);
            wk[0] = w4.x; wk[1] = w4.y; wk[2] = w4.z; wk[3] = w4.w;
        } else {
            float2 w01 = bf16x2_floats(raw.x), w23 = bf16x2_floats(raw.y);
            wk[0] = w01.x; wk[1] = w01.y; wk[2] = w23.x; wk[3] = w23.y;
        }
        if (h.dge.scales) dge4(gk, raw, h.dge, (unsigned)(h.first + i));
        alignas(8) bf16 out[4];
        for (int k = 0; k < 4; k++) {
            wk[k] = adamw_step(gk[k], &mk[k], &vk[k], wk[k], gscale, h);
            out[k] = adamw_round(wk[k], master, h, i + k);
        }
        *(float4 *)(m + i) = make_float4(mk[0], mk[1], mk[2], mk[3]);
        *(float4 *)(v + i) = make_float4(vk[0], vk[1], vk[2], vk[3]);
        if (master) *(float4 *)(master + i) = make_float4(wk[0], wk[1], wk[2], wk[3]);
        *(uint2 *)(p + i) = *(const uint2 *)out;
        return;
    }
    for (size_t e = i; e < i + 4 && e < n; e++) {
        float ge = h.dge.scales ? dge1(g[e], p[e], h.dge, (unsigned)(h.first + e)) : g[e];
        float w = adamw_step(ge, &m[e], &v[e], master ? master[e] : __bfloat162float(p[e]), gscale, h);
        if (master) master[e] = w;
        p[e] = adamw_round(w, master, h, e);
    }
}

// sumsq, clip: as in AdamW; dge: the tensor's DGE, or NULL
static void adamw_update(bf16 *p, float *master, const float *g, float *m, float *v, size_t n, float lr, float b1, float b2,
                         int t, float eps, float wd, const float *sumsq, float clip, uint64_t key, size_t first, const Dge *dge,
                         cudaStream_t s) {
    if (n == 0) return;
    AdamW h = { lr, b1, b2, 1.0f - powf(b1, (float)t), 1.0f - powf(b2, (float)t), eps, wd, clip, sumsq, key, first, {} };
    if (dge && dge->scales) h.dge = *dge;
    int vec = ((uintptr_t)p % 8 | (uintptr_t)master % 16 | (uintptr_t)g % 16 | (uintptr_t)m % 16 | (uintptr_t)v % 16) == 0;
    adamw_kernel<<<ceil_div(ceil_div((long long)n, 4), 256), 256, 0, s>>>(p, master, g, m, v, n, h, vec);
    CUDA_CHECK(cudaGetLastError());
}

#endif
