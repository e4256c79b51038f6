// defines: ATT8_KEYS, att8_exponent, att8_pow2, att8_key_at, att8_quantize_heads, att8_value_exponents,
//          att8_forward
// The FP8 attention core's numerics (--attn-core fp8), shared by the GPU kernels
// (attention_fp8.cuh) and the CPU reference here.
//  - Q, K and V are E4M3 codes per (token, head) row with a power-of-two scale 2^e, e the
//    smallest with absmax / 2^e <= 448. code * 2^e is exactly a BF16 number, so the quantized
//    rows are written back over qkv, and the backward (cuDNN's BF16 flash backward on the GPU)
//    differentiates the forward's effective Q, K, V: the straight-through estimator.
//  - S = Q K^T from the codes; q's and k's scales are outer factors of S.
//  - P in E4M3 too, which needs V's per-key scale out of the contraction P V: it goes into the
//    exponent. In log2 units, x_j = S_j log2(e) / sqrt(d) and y_j = x_j + e_v(j); the running
//    max m is taken over y, so p_j = 2^(y_j - m) lies in (0, 1] and P = E4M3(256 p_j) times V's
//    codes sums to 256 * sum_j 2^(x_j - m) v_j exactly as wanted, each term rounded relative to
//    its own size. The normalizer sums the unrounded 2^(x_j - m) = p_j 2^-e_v(j).
//  - Keys in blocks of ATT8_KEYS, ascending; per block the max is updated first, then p taken
//    (the online softmax): P's rounding depends on the block boundaries, which the CPU reference
//    therefore keeps.
// The output is O = acc / (256 l) and the log-sum-exp (natural log, of S / sqrt(d)) is
// (m + log2 l) ln 2, what the BF16 backward reads.
#ifndef LLMC_ATTENTION_FP8_H
#define LLMC_ATTENTION_FP8_H

#include <math.h>
#include "quant.h"

#define ATT8_KEYS 64  // keys per block of the online softmax (and queries per GPU block)

// e of a row's scale 2^e: absmax = f 2^E, f in [1, 2): 448 = 1.75 * 2^8, so e = E - 8 when
// f <= 1.75, else E - 7. A zero row gets e = 0; e is kept >= -126 (2^e a normal float).
static HD inline int att8_exponent(float amax) {
    if (!(amax > 0.0f)) return 0;
    uint32_t u = f32_bits(amax);
    int E = (int)(u >> 23) - 127, e = E - 8 + ((u & 0x7fffffu) > 0x600000u);  // mantissa of 1.75: 0x600000
    return e < -126 ? -126 : e;
}

// 2^e for e in [-126, 127], exactly
static HD inline float att8_pow2(int e) { return f32_from_bits((uint32_t)(e + 127) << 23); }

// the key that position k (0..31) of a 32-key chunk of V's transposed codes holds: the order in
// which the GPU's S accumulators hold P (within 16 keys: 0 1 8 9 2 3 10 11 4 5 12 13 6 7 14 15)
static HD inline int att8_key_at(int k) {
    int w = k & 15;
    return (k & 16) + 2 * (w >> 2) + (w & 1) + 8 * ((w >> 1) & 1);
}

// CPU reference ----------------------------------------------------------------------------

// each head row of qkv (N rows of `heads` x hd) quantized in place to E4M3 codes times 2^e;
// e (N, heads) out
static void att8_quantize_heads(float *qkv, int *e, int N, int heads, int hd) {
    for (long long r = 0; r < (long long)N * heads; r++) {
        float *x = qkv + r * hd, amax = 0.0f;
        for (int i = 0; i < hd; i++) amax = fmaxf(amax, fabsf(x[i]));
        int ex = att8_exponent(amax);
        float down = att8_pow2(-ex), up = att8_pow2(ex);
        for (int i = 0; i < hd; i++) x[i] = quant_round(x[i] * down, FMT_E4M3) * up;
        e[r] = ex;
    }
}

// V's exponents ev (B, KV, T), one run of keys per (batch, kv head), from the head rows' e
// (B T, H + 2 KV) of att8_quantize_heads
static void att8_value_exponents(int *ev, const int *e, int B, int T, int H, int KV) {
    for (int b = 0; b < B; b++)
        for (int kv = 0; kv < KV; kv++)
            for (int t = 0; t < T; t++) ev[((size_t)b * KV + kv) * T + t] = e[((size_t)b * T + t) * (H + 2 * KV) + H + KV + kv];
}

// one query row's output o (hd) and log-sum-exp, from the quantized rows (att8_quantize_heads):
// q (hd), the keys' k and v rows (stride ld) and V's exponents ev; keys 0..t (causal)
static float att8_forward(float *o, const float *q, const float *k, const float *v, const int *ev, size_t ld, int t, int hd) {
    float c = 1.4426950408889634f / sqrtf((float)hd);  // log2(e) / sqrt(d), as the GPU's
    float m = -INFINITY, l = 0.0f;
    for (int i = 0; i < hd; i++) o[i] = 0.0f;
    float y[ATT8_KEYS];
    for (int j0 = 0; j0 <= t; j0 += ATT8_KEYS) {
        int n = t - j0 + 1 < ATT8_KEYS ? t - j0 + 1 : ATT8_KEYS;
        float mb = m;
        for (int j = 0; j < n; j++) {
            const float *kj = k + (size_t)(j0 + j) * ld;
            float s = 0.0f;
            for (int i = 0; i < hd; i++) s += q[i] * kj[i];
            y[j] = s * c + (float)ev[j0 + j];
            mb = fmaxf(mb, y[j]);
        }
        float alpha = exp2f(m - mb);
        l *= alpha;
        for (int i = 0; i < hd; i++) o[i] *= alpha;
        for (int j = 0; j < n; j++) {
            float p = exp2f(y[j] - mb), p8 = quant_round(p * 256.0f, FMT_E4M3);
            const float *vj = v + (size_t)(j0 + j) * ld;
            float down = att8_pow2(-ev[j0 + j]);  // v * down: V's codes
            for (int i = 0; i < hd; i++) o[i] += p8 * (vj[i] * down);
            l += p * down;
        }
        m = mb;
    }
    float inv = 1.0f / (l * 256.0f);
    for (int i = 0; i < hd; i++) o[i] *= inv;
    return (m + log2f(l)) * 0.6931471805599453f;
}

#endif
