// defines: Format, format_name, format_parse, format_max, format_is_fp4, fp4_layout, quant_round,
//          dge_derivative, dge_factor, quantile_index, quantile_lerp, occ_fold, quantize_matrix, row_quantile,
//          occ_clamp_rows, occ_fold_codes
// The one definition of every rounding rule in the project (SPEC.md 4). The element rules are
// __host__ __device__ so the GPU kernels and the CPU reference produce the same bits; the
// matrix-level helpers below them are the CPU reference's.
#ifndef LLMC_QUANT_H
#define LLMC_QUANT_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hd.h"

typedef enum { FMT_FP32, FMT_BF16, FMT_E4M3, FMT_E5M2, FMT_E2M1, FMT_E1M2, FMT_E3M0, NUM_FORMATS } Format;

static const char *const format_names[NUM_FORMATS] = { "fp32", "bf16", "e4m3", "e5m2", "e2m1", "e1m2", "e3m0" };

static inline const char *format_name(Format f) { return format_names[f]; }

// returns the format named s, or -1
static inline int format_parse(const char *s) {
    for (int f = 0; f < NUM_FORMATS; f++) if (strcmp(s, format_names[f]) == 0) return f;
    return -1;
}

static HD inline int format_is_fp4(Format f) { return f == FMT_E2M1 || f == FMT_E1M2 || f == FMT_E3M0; }

// grid magnitude i (0..7) of a 4-bit layout; code = index
static HD inline float fp4_grid(Format f, int i) {
    const float e2m1[8] = { 0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f };
    const float e1m2[8] = { 0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 2.5f, 3.0f, 3.5f };
    const float e3m0[8] = { 0.0f, 0.25f, 0.5f, 1.0f, 2.0f, 4.0f, 8.0f, 16.0f };
    return f == FMT_E2M1 ? e2m1[i] : f == FMT_E1M2 ? e1m2[i] : e3m0[i];
}

// largest magnitude of a scaled format (the absmax maps onto it); 0 for the unscaled ones
static HD inline float format_max(Format f) {
    switch (f) {
        case FMT_E4M3: return 448.0f;
        case FMT_E5M2: return 57344.0f;
        case FMT_E2M1: case FMT_E1M2: case FMT_E3M0: return fp4_grid(f, 7);
        default: return 0.0f;
    }
}

static HD inline uint32_t f32_bits(float x) { union { float f; uint32_t u; } v; v.f = x; return v.u; }
static HD inline float f32_from_bits(uint32_t u) { union { float f; uint32_t u; } v; v.u = u; return v.f; }

// 8-bit float with mbits mantissa bits and smallest normal exponent emin, saturating at maxv
static HD inline float fp8_round(float x, int mbits, int emin, float maxv) {
    float a = fabsf(x);
    if (a != a) return x;
    if (a >= maxv) return copysignf(maxv, x);
    float r;
    if (a < f32_from_bits((uint32_t)(127 + emin) << 23)) {  // subnormal: a multiple of 2^(emin - mbits)
        // exact scalings by powers of two (what ldexpf does here, without its cost on the GPU)
        r = rintf(a * f32_from_bits((uint32_t)(127 + mbits - emin) << 23)) * f32_from_bits((uint32_t)(127 + emin - mbits) << 23);
    } else {                       // normal: round the fp32 mantissa to mbits, ties to even
        uint32_t u = f32_bits(a);
        int shift = 23 - mbits;
        u += (1u << (shift - 1)) - 1u + ((u >> shift) & 1u);
        r = f32_from_bits(u & ~((1u << shift) - 1u));
    }
    return copysignf(r, x);
}

// 4-bit: nearest grid value, ties to the even code, saturating. Each 4-bit grid is a tiny float
// format whose code parity is its last mantissa bit: E2M1 has 1 mantissa bit and smallest normal
// 1 (2^0), E1M2 2 bits from 2, E3M0 none from 0.25 (test/test_quant checks this by brute force).
static HD inline void fp4_layout(Format f, int *mbits, int *emin, float *maxv) {
    *mbits = f == FMT_E2M1 ? 1 : f == FMT_E1M2 ? 2 : 0;
    *emin = f == FMT_E2M1 ? 0 : f == FMT_E1M2 ? 1 : -2;
    *maxv = fp4_grid(f, 7);
}
static HD inline float fp4_round(float x, Format f) {
    int mbits, emin;
    float maxv;
    fp4_layout(f, &mbits, &emin, &maxv);
    return fp8_round(x, mbits, emin, maxv);
}

static HD inline float bf16_round(float x) {
    uint32_t u = f32_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return x;  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return f32_from_bits(u & 0xffff0000u);
}

// x (already divided by its scale) rounded to format f
static HD inline float quant_round(float x, Format f) {
    switch (f) {
        case FMT_BF16: return bf16_round(x);
        case FMT_E4M3: return fp8_round(x, 3, -6, 448.0f);
        case FMT_E5M2: return fp8_round(x, 2, -14, 57344.0f);
        case FMT_E2M1: case FMT_E1M2: case FMT_E3M0: return fp4_round(x, f);
        default: return x;
    }
}

// DGE (SPEC.md 4, RECIPE.md 4): d/dw of the smooth quantizer f at w (in grid units), capped at 3
static HD inline float dge_derivative(float w, Format f, float k) {
    // the interval holding a (the last one above g7; constant indices, as above): E2M1's, the
    // recipe's, in closed form (widths 0.5 below 2, 1 below 4, 2 from 4 on: 11 instructions on the GPU
    // where the search takes 20). Every interval's width is a power of two, so 2 / width comes from
    // its bits, and multiplying by it rounds exactly as dividing 2 (a - lo) by the width would
    float a = fabsf(w), lo, width;
    if (f == FMT_E2M1) {
        width = a < 2.0f ? 0.5f : a < 4.0f ? 1.0f : 2.0f;
        float half = 0.5f * floorf(2.0f * a), one = floorf(a);  // both, then a select: no branch
        lo = a < 2.0f ? half : a < 4.0f ? one : 4.0f;
    } else {
        lo = fp4_grid(f, 0); width = fp4_grid(f, 1) - lo;
        for (int i = 1; i < 7; i++)
            if (a >= fp4_grid(f, i)) { lo = fp4_grid(f, i); width = fp4_grid(f, i + 1) - lo; }
    }
    float t = fabsf((a - lo) * f32_from_bits(0x7f800000u - f32_bits(width)) - 1.0f), e = 1.0f / k - 1.0f;
#ifdef __CUDA_ARCH__
    // t^e as 2^(e log2 t), ~90 instructions fewer than powf. t is 0 or a normal number (a multiple
    // of 2^-24 at least), so log2 t is its exponent plus the MUFU's log2 of its mantissa in [1, 2),
    // where that is within 2^-22 (absolute; CUDA's table of intrinsics); log2f in full took 30
    // instructions more for the same accuracy here. Below the cap, y = e log2 t < log2(3k) (3.91
    // at k = 5): the logarithm's 2^-22 and its sum's rounding (half an ulp of |log2 t| < 5) times
    // |e| and the product's rounding move y by at most 5.0e-7, which 2^y makes 3.5e-7 relative;
    // exp2f's 2 ulp, powf's 1 and the two 1/k products' roundings add 4.8e-7. So the GPU's factor
    // is within 1e-6 of the CPU's at k = 5 (test_quant_gpu checks it).
    uint32_t tb = f32_bits(t);
    float lt = (float)((int)(tb >> 23) - 127) + __log2f(f32_from_bits((tb & 0x007fffffu) | 0x3f800000u));
    float p = t > 0.0f ? exp2f(e * lt) : e == 0.0f ? 1.0f : INFINITY;  // powf's values at t = 0
#else
    float p = powf(t, e);
#endif
    float d = (1.0f / k) * p;
    return d < 3.0f ? d : 3.0f;
}
// the DGE factor of a weight w whose row scale is s (a zero row's weights sit at 0)
static HD inline float dge_factor(float w, float s, Format f, float k) { return dge_derivative(s == 0.0f ? 0.0f : w / s, f, k); }

// OCC's quantile p of n ascending values is v[i] + frac * (v[i + 1] - v[i]), or v[n - 1] (i = n - 1,
// frac 0) at the top. The CPU's OCC and the GPU's pick the same positions and the same two roundings.
static inline void quantile_index(int n, double p, int *i, float *frac) {
    double pos = p * (n - 1);
    int k = (int)floor(pos);
    *i = k < n - 1 ? k : n - 1;
    *frac = k < n - 1 ? (float)(pos - k) : 0.0f;
}
static HD inline float quantile_lerp(float a, float b, float frac) {
#ifdef __CUDA_ARCH__
    return __fadd_rn(a, __fmul_rn(frac, __fsub_rn(b, a)));  // no FMA: the CPU rounds twice
#else
    return a + frac * (b - a);
#endif
}

// OCC's compensation in the operand (--occ-comp 2): an entry the clamp cut keeps its excess over
// the clamp, excess = (x - clamp(x)) / s in the row's scale, in its code: E4M3(code + excess).
// E4M3 holds every 4-bit code exactly, so the others stay as they are; the FP8 GEMMs that run the
// 4-bit codes carry the outliers at no extra cost (against R W^T with the BF16 W: the outliers
// meet the quantized weights, and 3 mantissa bits). An excess past E4M3's 448 saturates there; a
// row whose clamped values are all zero (scale 0) has no scale to carry its outliers: they are lost.
static HD inline float occ_fold(float code, float excess) { return excess == 0.0f ? code : quant_round(code + excess, FMT_E4M3); }

// ---------------------------------------------------------------------------------------------
// CPU reference helpers (host functions)
#include "utils.h"

// quantize x (rows x cols, row-major) with one scale per row (axis 0), per column (axis 1) or,
// if tensorwise, one for all. codes = round(x / s) (grid values, exact), scales[rows or cols].
// Unscaled formats (fp32, bf16) get scale 1.
static void quantize_matrix(float *codes, float *scales, const float *x, int rows, int cols,
                            Format f, int axis, int tensorwise) {
    int nvec = axis == 0 ? rows : cols, len = axis == 0 ? cols : rows;
    size_t sv = axis == 0 ? (size_t)cols : 1, se = axis == 0 ? 1 : (size_t)cols;  // strides
    float fmax = format_max(f);
    float tmax = 0.0f;
    if (tensorwise && fmax > 0.0f) {
        for (size_t i = 0; i < (size_t)rows * cols; i++) tmax = fmaxf(tmax, fabsf(x[i]));
    }
    #pragma omp parallel for
    for (int v = 0; v < nvec; v++) {
        const float *xv = x + v * sv;
        float *cv = codes + v * sv;
        float s = 1.0f;
        if (fmax > 0.0f) {
            float amax = tmax;
            if (!tensorwise) { amax = 0.0f; for (int e = 0; e < len; e++) amax = fmaxf(amax, fabsf(xv[e * se])); }
            s = amax / fmax;
        }
        scales[v] = s;
        for (int e = 0; e < len; e++) cv[e * se] = s == 0.0f ? 0.0f : quant_round(xv[e * se] / s, f);
    }
}

// quantile p of the ascending values v[0..n-1], linear interpolation (SPEC.md 4, OCC)
static float row_quantile(const float *v, int n, double p) {
    int i; float frac;
    quantile_index(n, p, &i, &frac);
    return i >= n - 1 ? v[n - 1] : quantile_lerp(v[i], v[i + 1], frac);
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

// OCC: clamp each row of x (rows x cols) to its own [quantile(1-alpha), quantile(alpha)];
// xc = clamped, resid = x - xc rounded to BF16 (the compensation's GEMM operand on the GPU;
// nonzero only at the outliers). Returns the clamped count.
static long occ_clamp_rows(float *xc, float *resid, const float *x, int rows, int cols, float alpha) {
    long clamped = 0;
    #pragma omp parallel reduction(+:clamped)
    {
        float *sorted = (float *)malloc_check((size_t)cols * sizeof(float));
        #pragma omp for
        for (int r = 0; r < rows; r++) {
            const float *xr = x + (size_t)r * cols;
            memcpy(sorted, xr, (size_t)cols * sizeof(float));
            qsort(sorted, (size_t)cols, sizeof(float), cmp_float);
            float lo = row_quantile(sorted, cols, 1.0 - (double)alpha);
            float hi = row_quantile(sorted, cols, (double)alpha);
            for (int c = 0; c < cols; c++) {
                float v = fminf(fmaxf(xr[c], lo), hi);
                xc[(size_t)r * cols + c] = v;
                resid[(size_t)r * cols + c] = bf16_round(xr[c] - v);
                clamped += v != xr[c];
            }
        }
        free(sorted);
    }
    return clamped;
}

// OCC's residual into the codes (occ_fold): codes, scales of the clamped rows xc of x (rows x cols)
static void occ_fold_codes(float *codes, const float *scales, const float *x, const float *xc, int rows, int cols) {
    #pragma omp parallel for
    for (int r = 0; r < rows; r++) {
        if (scales[r] == 0.0f) continue;
        for (int c = 0; c < cols; c++) {
            size_t i = (size_t)r * cols + c;
            codes[i] = occ_fold(codes[i], (x[i] - xc[i]) / scales[r]);
        }
    }
}

#endif
