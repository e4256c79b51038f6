// Unit tests of llmc/quant.h against independent brute-force references: every format's value
// set is enumerated from its bit layout, and each rounding is checked to be the nearest value,
// ties to the even code, saturating. Plus scaling, DGE check values (RECIPE.md 4), OCC, and the
// FP8 attention core's reference (attention_fp8.h) against exact attention in double precision.
#define _DEFAULT_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include "../llmc/quant.h"
#include "../llmc/quant_stats.h"
#include "../llmc/attention_fp8.h"
#include "../llmc/rand.h"
#include "check.h"

// all non-negative finite values of an 8-bit float (exponent bits e, mantissa bits mb, bias),
// ascending, indexed by their code; e4m3 has no infinity and only S.1111.111 as NaN
static int fp8_values(float *out, int eb, int mb, int bias, int e4m3) {
    int n = 0;
    for (int code = 0; code < (1 << (eb + mb)); code++) {
        int e = code >> mb, man = code & ((1 << mb) - 1);
        if (e4m3 && e == 15 && man == 7) continue;
        if (!e4m3 && e == (1 << eb) - 1) continue;  // e5m2: inf and NaN
        out[n++] = e == 0 ? ldexpf((float)man, 1 - bias - mb) : ldexpf(1.0f + (float)man / (1 << mb), e - bias);
    }
    return n;
}

// nearest value by brute force, ties to the even code, saturating at the largest
static float brute_round(float x, const float *vals, int n) {
    float a = fabsf(x);
    int best = 0;
    for (int i = 1; i < n; i++) {
        float d = fabsf(vals[i] - a), db = fabsf(vals[best] - a);
        if (d < db || (d == db && (i % 2 == 0))) best = i;
    }
    return copysignf(vals[best], x);
}

static void check_format(Format f, const float *vals, int n, uint64_t seed) {
    int bad = 0;
    float worst = 0;
    // every value, every midpoint (a tie) and its two neighbours, and random points across the
    // range and beyond
    for (int i = 0; i < n; i++) {
        float mid = i + 1 < n ? 0.5f * (vals[i] + vals[i + 1]) : vals[i] * 1.5f;
        float pts[5] = { vals[i], mid, nextafterf(mid, 0.0f), nextafterf(mid, INFINITY), -vals[i] };
        for (int j = 0; j < 5; j++) {
            float got = quant_round(pts[j], f), want = brute_round(pts[j], vals, n);
            if (got != want || signbit(got) != signbit(want)) { if (!bad) worst = pts[j]; bad++; }
        }
    }
    for (int i = 0; i < 200000; i++) {
        float u = rng_uniform(rng_hash(seed, (uint64_t)i));
        float x = (u - 0.5f) * 2.5f * vals[n - 1] * powf(2.0f, -40.0f * rng_uniform(rng_hash(seed + 1, (uint64_t)i)));
        float got = quant_round(x, f), want = brute_round(x, vals, n);
        if (got != want || signbit(got) != signbit(want)) { if (!bad) worst = x; bad++; }
    }
    CHECK(bad == 0, "%s: %d roundings differ from brute force (first at %.9g: got %.9g want %.9g)", format_name(f), bad,
          worst, quant_round(worst, f), brute_round(worst, vals, n));
}

// the FP8 attention core's reference: the scale exponent keeps absmax / 2^e in (224, 448]; the key
// order is a permutation; on T keys of random rows (V's rows over 2^-12 .. 2^6 in size, so that its
// scales fold into the exponent over a wide range) the log-sum-exp is the exact one of the
// quantized rows (the normalizer sums unrounded terms), and the output is exact attention on them
// but for P's E4M3 rounding (2^-4 relative a term): within 10% of the row's largest output, 0.3% on
// average (measured: 5.5%, in a row of few keys; 0.11%)
static void test_attention_fp8(void) {
    int bad = 0;
    for (int i = 0; i < 100000; i++) {
        float amax = ldexpf(1.0f + (float)(i % 1000) / 1000.0f, i / 1000 - 50);
        int e = att8_exponent(amax);
        bad += !(amax * att8_pow2(-e) <= 448.0f && amax * att8_pow2(-e) > 224.0f);
    }
    CHECK(bad == 0 && att8_exponent(448.0f) == 0 && att8_exponent(448.5f) == 1 && att8_exponent(0.0f) == 0,
          "att8_exponent: %d amax outside (224, 448] after scaling", bad);
    unsigned seen = 0;
    for (int k = 0; k < 32; k++) seen |= 1u << att8_key_at(k);
    CHECK(seen == 0xffffffffu && att8_key_at(2) == 8 && att8_key_at(4) == 2 && att8_key_at(19) == 25, "att8_key_at is not the fragment order");
    enum { T = 200, D = 64, HEADS = 3 };  // one q, k, v head per token
    float *x = (float *)malloc_check((size_t)T * HEADS * D * sizeof(float)), o[D];
    int *e = (int *)malloc_check((size_t)T * HEADS * sizeof(int)), ev[T];
    Rng rng = rng_init(7);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < HEADS; h++) {
            float size = h == 2 ? ldexpf(1.0f, t % 19 - 12) : 1.5f;
            for (int i = 0; i < D; i++) x[(t * HEADS + h) * D + i] = size * (2.0f * rng_next_uniform(&rng) - 1.0f) * (i % 7 == 0 ? 4.0f : 1.0f);
        }
    att8_quantize_heads(x, e, T, HEADS, D);
    int onbf = 1;  // a code times 2^e is a BF16 number
    for (int i = 0; i < T * HEADS * D; i++) onbf &= bf16_round(x[i]) == x[i];
    for (int t = 0; t < T; t++) ev[t] = e[t * HEADS + 2];
    double worst = 0.0, mean = 0.0, lse_err = 0.0;
    for (int t = 0; t < T; t++) {
        const float *q = x + t * HEADS * D;
        float lse = att8_forward(o, q, x + D, x + 2 * D, ev, HEADS * D, t, D);
        double s[T], mx = -1e300, sum = 0.0, ref[D] = { 0 }, big = 0.0;
        for (int j = 0; j <= t; j++) {
            s[j] = 0.0;
            for (int i = 0; i < D; i++) s[j] += (double)q[i] * x[(j * HEADS + 1) * D + i];
            s[j] /= sqrt((double)D);
            mx = fmax(mx, s[j]);
        }
        for (int j = 0; j <= t; j++) sum += exp(s[j] - mx);
        for (int j = 0; j <= t; j++)
            for (int i = 0; i < D; i++) ref[i] += exp(s[j] - mx) / sum * x[(j * HEADS + 2) * D + i];
        for (int i = 0; i < D; i++) big = fmax(big, fabs(ref[i]));
        for (int i = 0; i < D; i++) { worst = fmax(worst, fabs(o[i] - ref[i]) / big); mean += fabs(o[i] - ref[i]) / big / (T * D); }
        lse_err = fmax(lse_err, fabs(lse - (mx + log(sum))));
    }
    CHECK(onbf, "att8_quantize_heads: quantized values must be BF16 numbers");
    CHECK(worst < 0.1 && mean < 0.003 && lse_err < 1e-4, "att8_forward vs exact: worst %.3g, mean %.3g of the row's largest output, "
          "log-sum-exp %.3g", worst, mean, lse_err);
    printf("attention fp8 reference vs exact on its quantized rows: worst %.2e, mean %.2e, log-sum-exp %.1e\n", worst, mean, lse_err);
    free(x); free(e);
}

int main(void) {
    // 4-bit layouts: each grid against brute force, plus the spec's named ties
    for (Format f = FMT_E2M1; f <= FMT_E3M0; f++) {
        float vals[8];
        for (int i = 0; i < 8; i++) vals[i] = fp4_grid(f, i);
        check_format(f, vals, 8, 100 + f);
    }
    const float ties[][2] = { { 0.25f, 0.0f }, { 0.75f, 1.0f }, { 1.25f, 1.0f }, { 1.75f, 2.0f }, { 2.5f, 2.0f },
                              { 3.5f, 4.0f }, { 5.0f, 4.0f }, { 7.0f, 6.0f }, { 1e30f, 6.0f }, { INFINITY, 6.0f } };
    for (int i = 0; i < 10; i++) {
        CHECK(quant_round(ties[i][0], FMT_E2M1) == ties[i][1], "e2m1(%g) = %g, want %g", ties[i][0], quant_round(ties[i][0], FMT_E2M1), ties[i][1]);
        CHECK(quant_round(-ties[i][0], FMT_E2M1) == -ties[i][1], "e2m1(-%g) sign", ties[i][0]);
    }
    CHECK(quant_round(-0.1f, FMT_E2M1) == 0.0f && signbit(quant_round(-0.1f, FMT_E2M1)), "e2m1(-0.1) must be -0");
    CHECK(isnan(quant_round(NAN, FMT_E2M1)) && isnan(quant_round(NAN, FMT_E4M3)) && isnan(quant_round(NAN, FMT_BF16)), "NaN must propagate");
    CHECK(quant_round(3.25f, FMT_E1M2) == 3.0f && quant_round(3.9f, FMT_E1M2) == 3.5f, "e1m2 tie and saturation");
    CHECK(quant_round(0.125f, FMT_E3M0) == 0.0f && quant_round(0.375f, FMT_E3M0) == 0.5f && quant_round(12.0f, FMT_E3M0) == 8.0f,
          "e3m0 ties");

    // 8-bit formats against their enumerated value sets
    float v8[256];
    int n = fp8_values(v8, 4, 3, 7, 1);
    CHECK(n == 127 && v8[n - 1] == 448.0f && v8[1] == 0x1p-9f, "e4m3 value set: %d values, max %g", n, v8[n - 1]);
    check_format(FMT_E4M3, v8, n, 7);
    CHECK(quant_round(449.0f, FMT_E4M3) == 448.0f && quant_round(-1e6f, FMT_E4M3) == -448.0f && quant_round(INFINITY, FMT_E4M3) == 448.0f,
          "e4m3 saturates");
    n = fp8_values(v8, 5, 2, 15, 0);
    CHECK(n == 124 && v8[n - 1] == 57344.0f && v8[1] == 0x1p-16f, "e5m2 value set: %d values, max %g", n, v8[n - 1]);
    check_format(FMT_E5M2, v8, n, 9);
    CHECK(quant_round(1e9f, FMT_E5M2) == 57344.0f, "e5m2 saturates");

    // bf16: ties to even
    CHECK(quant_round(1.0f + 0x1p-8f, FMT_BF16) == 1.0f, "bf16 tie down to even");
    CHECK(quant_round(1.0f + 3 * 0x1p-8f, FMT_BF16) == 1.0f + 0x1p-6f, "bf16 tie up to even");
    CHECK(quant_round(1.0f + 0x1p-8f + 0x1p-20f, FMT_BF16) == 1.0f + 0x1p-7f, "bf16 above the tie rounds up");

    // scaling: absmax maps to the top of the grid, zero rows are safe, scale invariance under 2^k
    enum { R = 3, K = 64 };
    float x[R * K], codes[R * K], scales[K], codes2[R * K], scales2[K], big[R * K];
    for (int i = 0; i < R * K; i++) x[i] = (float)(rng_normal(42, (uint64_t)i));
    for (int k = 0; k < K; k++) x[2 * K + k] = 0.0f;  // row 2 is all zeros
    quantize_matrix(codes, scales, x, R, K, FMT_E2M1, 0, 0);
    for (int r = 0; r < 2; r++) {
        float amax = 0, cmax = 0;
        for (int k = 0; k < K; k++) { amax = fmaxf(amax, fabsf(x[r * K + k])); cmax = fmaxf(cmax, fabsf(codes[r * K + k])); }
        CHECK(scales[r] == amax / 6.0f && cmax == 6.0f, "row %d: scale %g (want %g), top code %g", r, scales[r], amax / 6.0f, cmax);
    }
    int zeros_ok = scales[2] == 0.0f;
    for (int k = 0; k < K; k++) zeros_ok &= codes[2 * K + k] == 0.0f;
    CHECK(zeros_ok, "a zero row gets scale 0 and zero codes");
    for (int i = 0; i < R * K; i++) big[i] = x[i] * 0x1p100f;
    quantize_matrix(codes2, scales2, big, R, K, FMT_E2M1, 0, 0);
    int same = 1;
    for (int i = 0; i < R * K; i++) same &= codes[i] == codes2[i];
    for (int i = 0; i < R * K; i++) big[i] = x[i] * 0x1p-100f;
    quantize_matrix(codes2, scales2, big, R, K, FMT_E2M1, 0, 0);
    for (int i = 0; i < R * K; i++) same &= codes[i] == codes2[i];
    CHECK(same, "codes are invariant under scaling the input by 2^100 and 2^-100");
    quantize_matrix(codes2, scales2, x, R, K, FMT_E4M3, 1, 0);  // per column
    float cmax0 = 0, amax0 = 0;
    for (int r = 0; r < R; r++) { cmax0 = fmaxf(cmax0, fabsf(codes2[r * K])); amax0 = fmaxf(amax0, fabsf(x[r * K])); }
    CHECK(cmax0 == 448.0f && scales2[0] == amax0 / 448.0f, "per-column scaling: column 0 top code %g", cmax0);
    quantize_matrix(codes2, scales2, x, R, K, FMT_E2M1, 0, 1);  // tensor-wise
    CHECK(scales2[0] == scales2[1] && scales2[1] == scales2[2] && scales2[0] == fmaxf(scales[0], scales[1]), "tensor-wise: one scale");
    quantize_matrix(codes2, scales2, x, R, K, FMT_BF16, 0, 0);
    CHECK(scales2[0] == 1.0f && codes2[5] == bf16_round(x[5]), "bf16 is unscaled");

    // DGE check values (RECIPE.md 4, k = 5, FP32)
    CHECK(fabsf(dge_derivative(6.0f, FMT_E2M1, 5.0f) - 0.2f) < 1e-6f, "DGE f'(6) = %g, want 0.2", dge_derivative(6.0f, FMT_E2M1, 5.0f));
    CHECK(dge_derivative(5.0f, FMT_E2M1, 5.0f) == 3.0f, "DGE f'(5) = %g, want the cap 3", dge_derivative(5.0f, FMT_E2M1, 5.0f));
    const float want[10] = { 0.2f, 0.4446f, 0.5819f, 0.2186f, 2.1088f, 0.2709f, 0.3097f, 0.2709f, 0.2416f, 0.5819f };
    for (int i = 0; i < 20; i++) {
        float w = -6.0f + 12.0f * (float)i / 19.0f;
        float got = dge_derivative(w, FMT_E2M1, 5.0f), ref = want[i < 10 ? i : 19 - i];
        CHECK(fabsf(got - ref) < 1e-4f, "DGE f'(%g) = %.5f, want %.4f", w, got, ref);
    }
    CHECK(fabsf(dge_derivative(0.0f, FMT_E2M1, 5.0f) - 0.2f) < 1e-6f, "DGE at a grid point (0) is 1/k");

    // OCC: quantiles and clamping of a row with planted outliers; the residual in BF16
    enum { KO = 256 };
    float row[KO], xc[KO], res[KO], sorted[KO];
    for (int i = 0; i < KO; i++) row[i] = (float)i - 127.5f;  // -127.5 .. 127.5, distinct
    row[17] = 1e4f; row[200] = -3e4f; row[99] = 5e3f;          // outliers
    for (int i = 0; i < KO; i++) sorted[i] = row[i];
    qsort(sorted, KO, sizeof(float), cmp_float);
    float hi = row_quantile(sorted, KO, (double)0.99f);
    double pos = (double)0.99f * (KO - 1);
    int i0 = (int)floor(pos);
    CHECK(hi == sorted[i0] + (float)(pos - i0) * (sorted[i0 + 1] - sorted[i0]), "quantile interpolation");
    long clamped = occ_clamp_rows(xc, res, row, 1, KO, 0.99f);
    CHECK(clamped == 6, "alpha 0.99 on 256 distinct values clamps 3 + 3 entries, got %ld", clamped);
    int exact = 1, nonzero = 0;  // the residual is x - xc rounded to BF16
    for (int i = 0; i < KO; i++) { exact &= res[i] == bf16_round(row[i] - xc[i]); nonzero += res[i] != 0.0f; }
    CHECK(exact && nonzero == 6, "residual == bf16(input - clamped) (%d residual entries)", nonzero);
    CHECK(res[17] > 0 && res[99] > 0 && res[200] < 0, "the planted outliers are in the residual");
    CHECK(occ_clamp_rows(xc, res, row, 1, KO, 1.0f) == 0, "alpha 1 clamps nothing");

    // telemetry: the error measures on hand-computed cases, and Table 1's settings on the row above
    const float ref4[4] = { 1, 2, 3, 4 }, q4[4] = { 1, 2, 3, 5 }, one[2] = { 1, 1 }, half[2] = { 0.5f, 0.5f };
    QErr e = quant_error(ref4, q4, one, NULL, 2, 2, 0);
    CHECK(fabs(e.mse - 0.25) < 1e-12 && fabs(e.snr_db - 10 * log10(30.0)) < 1e-9 && fabs(e.cos - 34 / sqrt(30.0 * 39.0)) < 1e-12,
          "quant_error: mse %g snr %g cos %g", e.mse, e.snr_db, e.cos);
    e = quant_error(ref4, ref4, half, ref4, 2, 2, 1);  // 0.5 x + x, per column: 1.5x
    CHECK(fabs(e.cos - 1.0) < 1e-12 && fabs(e.mse - 0.25 * 30 / 4) < 1e-12, "quant_error with a column scale and an added term");
    e = quant_error(ref4, ref4, one, NULL, 2, 2, 0);
    CHECK(e.snr_db == 999.0 && e.mse == 0.0 && e.cos == 1.0, "quant_error: an exact copy");
    QErr t[QT_SETTINGS];
    quant_table_x(t, row, 1, KO, FMT_E2M1);
    float crow[KO], srow[1];
    quantize_matrix(crow, srow, row, 1, KO, FMT_E2M1, 0, 0);
    QErr direct = quant_error(row, crow, srow, NULL, 1, KO, 0);
    CHECK(t[0].mse == direct.mse, "Table 1, no clamp: the plain quantization");
    CHECK(t[4].snr_db > t[0].snr_db && t[2].snr_db > t[1].snr_db,
          "Table 1 with planted outliers: clamp+comp beats no clamp (%.1f vs %.1f dB) and clamp alone (%.1f vs %.1f)",
          t[4].snr_db, t[0].snr_db, t[2].snr_db, t[1].snr_db);
    // folded into the codes, the residual keeps E4M3's 3 mantissa bits up to 448 times the scale:
    // outliers 8 to 12 times the clamp fit, those above (80 to 240 times) saturate
    float mild[KO];
    memcpy(mild, row, sizeof(mild));
    mild[17] = 1e3f; mild[200] = -1.5e3f; mild[99] = 6e2f;
    QErr tm[QT_SETTINGS];
    quant_table_x(tm, mild, 1, KO, FMT_E2M1);
    CHECK(tm[5].snr_db > tm[0].snr_db + 10.0 && tm[5].snr_db <= tm[3].snr_db && t[5].snr_db < t[0].snr_db,
          "Table 1, the residual folded into the codes at 0.99: %.1f dB between no clamp's %.1f and the exact compensation's %.1f; "
          "saturated, %.1f dB below no clamp's %.1f", tm[5].snr_db, tm[0].snr_db, tm[3].snr_db, t[5].snr_db, t[0].snr_db);

    // where the outliers sit: 128 x 200, column 5 in every row, and row r's second entry in column
    // 10 + r % 100 (columns 10..37 twice, 38..109 once): the busiest 2 columns hold 128 + 2 of the
    // 256 entries, 101 columns hold any, and each block of 64 rows has column 5 plus 64 others
    float *resid = (float *)calloc_check(128 * 200, sizeof(float));
    for (int r = 0; r < 128; r++) { resid[r * 200 + 5] = 1.0f; resid[r * 200 + 10 + r % 100] = -2.0f; }
    OccShape sh = occ_shape(resid, 128, 200);
    CHECK(fabs(sh.top1 - 130.0 / 256) < 1e-12 && fabs(sh.cols - 101.0 / 200) < 1e-12 && fabs(sh.tile - 130.0 / 256) < 1e-12,
          "occ_shape: top1 %.6f cols %.6f tile %.6f", sh.top1, sh.cols, sh.tile);
    memset(resid, 0, 128 * 200 * sizeof(float));
    sh = occ_shape(resid, 128, 200);
    CHECK(sh.top1 == 0.0 && sh.cols == 0.0 && sh.tile == 0.0, "occ_shape without outliers: zeros");
    free(resid);
    test_attention_fp8();
    return check_summary("quant");
}
