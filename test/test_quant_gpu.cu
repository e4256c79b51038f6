// The element rules of llmc/quant.h run on the GPU must give the CPU's bits: every format's
// rounding on fresh random inputs (all magnitudes, every tie and grid point), and the DGE
// derivative within a few ulp (powf differs by an ulp or two between libm and CUDA). And the
// quantization kernels of llmc/quantize.cuh: the same scales and codes as quantize_matrix.
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "../llmc/quantize.cuh"
#include "../llmc/rand.h"
#include "check.h"

__global__ void round_kernel(float *out, const float *in, int n, Format f) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = quant_round(in[i], f);
}

__global__ void dge_kernel(float *out, const float *in, int n, Format f, float k) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = dge_derivative(in[i], f, k);
}

static int ulp_distance(float a, float b) {
    int ia = (int)f32_bits(a), ib = (int)f32_bits(b);
    return abs(ia - ib);
}

// FP8 byte back to float on the host
static float byte_value(fp8 b, Format f) {
    __half_raw h = __nv_cvt_fp8_to_halfraw(b, f == FMT_E5M2 ? __NV_E5M2 : __NV_E4M3);
    return __half2float(__half(h));
}

// the ways the trainer quantizes BF16 rows (SPEC.md 4), on fresh random data spanning 2^-20 ..
// 2^20 in scale, with zero, huge and tiny rows: per row (X, W), with the transposed copy; and a
// gradient G in two ways from one call: per row with folded column scales (the dgrad operand
// G * s_w) and per column with folded row scales, written transposed (the wgrad operand G * s_x).
// Every scale and code must be the CPU quantize_matrix's, bit for bit; the bias gradient's column
// sums from the same pass, FP32-close. Shapes with partial row blocks and partial warps; for the
// 4-bit formats a row of exact grid points and ties.
static void check_codes(const char *what, Format f, int rows, int cols, const fp8 *gcodes, const float *gscales, const float *xf,
                        int axis, float *codes, float *scales) {
    quantize_matrix(codes, scales, xf, rows, cols, f, axis, 0);
    int bad_s = 0, bad_c = 0;
    for (int v = 0; v < (axis ? cols : rows); v++) bad_s += f32_bits(scales[v]) != f32_bits(gscales[v]);
    for (size_t i = 0; i < (size_t)rows * cols; i++) bad_c += f32_bits(byte_value(gcodes[i], f)) != f32_bits(codes[i]);
    CHECK(bad_s == 0 && bad_c == 0, "%s %s %dx%d: %d scales, %d codes differ from the CPU", what, format_name(f), rows, cols, bad_s,
          bad_c);
}

static void test_quantize(uint64_t seed) {
    const int shapes[5][2] = { { 40, 64 }, { 48, 64 }, { 128, 768 }, { 64, 3072 }, { 80, 2056 } };
    const Format fmts[5] = { FMT_E2M1, FMT_E1M2, FMT_E3M0, FMT_E4M3, FMT_E5M2 };
    for (int si = 0; si < 5; si++) {
        int rows = shapes[si][0], cols = shapes[si][1], nb = ceil_div(rows, QROWS), transposed = rows % 16 == 0;
        size_t n = (size_t)rows * cols;
        bf16 *xb = (bf16 *)malloc_check(n * sizeof(bf16));
        float *x = (float *)malloc_check(n * sizeof(float)), *xf = (float *)malloc_check(n * sizeof(float));
        float *codes = (float *)malloc_check(n * sizeof(float)), *fold = (float *)malloc_check((rows + cols) * sizeof(float));
        float *scales = (float *)malloc_check((rows + cols) * sizeof(float)), *gscales = (float *)malloc_check((rows + cols) * sizeof(float));
        float *part = (float *)malloc_check((size_t)nb * cols * sizeof(float));
        fp8 *gcodes = (fp8 *)malloc_check(n), *gt = (fp8 *)malloc_check(n);
        for (int r = 0; r < rows; r++) {
            float mag = r == 0 ? 0.0f : r == 1 ? 1e30f : r == 2 ? 1e-30f : exp2f((float)(r % 41) - 20.0f);
            for (int c = 0; c < cols; c++) {
                size_t i = (size_t)r * cols + c;
                xb[i] = __float2bfloat16((float)rng_normal(seed + si, i) * mag);
                x[i] = __bfloat162float(xb[i]);
            }
        }
        for (int i = 0; i < rows + cols; i++) fold[i] = exp2f(-8.0f * rng_uniform(rng_hash(seed + 7 + si, i))) * 1.37f;
        bf16 *dx = (bf16 *)cuda_malloc(n * sizeof(bf16));
        float *ds = (float *)cuda_malloc((rows + cols) * sizeof(float)), *dfold = (float *)cuda_malloc((rows + cols) * sizeof(float));
        float *dpart = (float *)cuda_malloc((size_t)nb * cols * sizeof(float));
        fp8 *dc = (fp8 *)cuda_malloc(n), *dt = (fp8 *)cuda_malloc(n);
        unsigned *amax = (unsigned *)cuda_malloc(cols * sizeof(unsigned));
        cuda_upload(dx, xb, n * sizeof(bf16));
        cuda_upload(dfold, fold, (rows + cols) * sizeof(float));
        double worst_sum = 0.0;
        for (int fi = 0; fi < 5; fi++) {
            Format f = fmts[fi];
            if (format_is_fp4(f)) {  // row 3: the format's max (scale 1), then its grid points and every tie, both signs
                for (int c = 0; c < cols; c++) {
                    int i = c % 15;
                    float v = i < 8 ? fp4_grid(f, i) : 0.5f * (fp4_grid(f, i - 8) + fp4_grid(f, i - 7));
                    xb[3 * cols + c] = __float2bfloat16(c == 0 ? format_max(f) : (c / 15) % 2 ? -v : v);
                    x[3 * cols + c] = __bfloat162float(xb[3 * cols + c]);
                }
                cuda_upload(dx + 3 * cols, xb + 3 * cols, cols * sizeof(bf16));
            }
            for (int grad = 0; grad < 1 + transposed; grad++) {
                CUDA_CHECK(cudaMemset(ds, 0xff, (rows + cols) * sizeof(float)));  // poison
                CUDA_CHECK(cudaMemset(dc, 0x7f, n));
                CUDA_CHECK(cudaMemset(dt, 0x7f, n));
                RowSource src = rows_plain(dx);
                if (!grad) quantize_rows(dc, transposed ? dt : NULL, ds, &src, rows, cols, f, 0);
                else quantize_grad(dc, ds, dt, ds + rows, &src, dfold, dfold + cols, rows, cols, f, amax, dpart, 0);
                cuda_download(gcodes, dc, n);
                cuda_download(gscales, ds, (rows + cols) * sizeof(float));
                for (size_t i = 0; i < n; i++) xf[i] = x[i] * (grad ? fold[i % cols] : 1.0f);
                check_codes(grad ? "quantize_grad per row (column scales folded)" : "quantize_rows", f, rows, cols, gcodes, gscales,
                            xf, 0, codes, scales);
                if (!transposed) continue;
                cuda_download(gt, dt, n);
                int bad_t = 0;
                for (int r = 0; r < rows; r++)
                    for (int c = 0; c < cols; c++) {
                        if (!grad) bad_t += gt[(size_t)c * rows + r] != gcodes[(size_t)r * cols + c];
                        gcodes[(size_t)r * cols + c] = gt[(size_t)c * rows + r];
                    }
                CHECK(bad_t == 0, "quantize_rows %s %dx%d: %d transposed codes differ from the row-major ones", format_name(f), rows,
                      cols, bad_t);
                if (!grad) continue;
                for (size_t i = 0; i < n; i++) xf[i] = x[i] * fold[cols + i / cols];
                check_codes("quantize_grad per column (row scales folded)", f, rows, cols, gcodes, gscales + rows, xf, 1, codes,
                            scales);
                cuda_download(part, dpart, (size_t)nb * cols * sizeof(float));
                for (int c = 0; c < cols; c++) {  // the column sums of x, against FP64, relative to the column's sum of |x|
                    double sum = 0.0, ref = 0.0, mag = 0.0;
                    for (int b = 0; b < nb; b++) sum += part[(size_t)b * cols + c];
                    for (int r = 0; r < rows; r++) { ref += x[(size_t)r * cols + c]; mag += fabs(x[(size_t)r * cols + c]); }
                    if (mag > 0.0) worst_sum = fmax(worst_sum, fabs(sum - ref) / mag);
                }
            }
        }
        if (transposed) CHECK(worst_sum <= 1e-6, "quantize_grad %dx%d: column sums off by %.3g of the column's sum of |x|", rows, cols, worst_sum);
        printf("quantize %dx%d: per row%s: scales and codes identical to the CPU for e2m1 e1m2 e3m0 e4m3 e5m2", rows, cols,
               transposed ? " with the transposed copy; a gradient per row (column scales) and per column (row scales)" : "");
        if (transposed) printf("; column sums %.1e", worst_sum);
        printf("\n");
        cuda_free(dx, n * sizeof(bf16)); cuda_free(ds, (rows + cols) * sizeof(float)); cuda_free(dfold, (rows + cols) * sizeof(float));
        cuda_free(dpart, (size_t)nb * cols * sizeof(float)); cuda_free(dc, n); cuda_free(dt, n); cuda_free(amax, cols * sizeof(unsigned));
        free(xb); free(x); free(xf); free(codes); free(fold); free(scales); free(gscales); free(part); free(gcodes); free(gt);
    }
}

// the producers fused into the quantizers (LayerNorm, RMSNorm, GELU, SwiGLU; the gradients
// through GELU and SwiGLU) against the same producer in FP64 then the CPU quantizer: the scales within FP32 rounding, the codes the same
// except where the FP32 and FP64 values straddle a rounding boundary (then neighbours on the
// grid, and at most 0.1% of them), and the norm statistics within FP32 rounding
static void test_fused_sources(uint64_t seed) {
    const int rows = 96, cols = 768;
    const char *names[6] = { "layernorm", "rmsnorm", "gelu", "swiglu", "dgelu", "dswiglu" };
    size_t n = (size_t)rows * cols;
    bf16 *hx = (bf16 *)malloc_check(2 * n * sizeof(bf16)), *hw = (bf16 *)malloc_check(2 * cols * sizeof(bf16));
    float *x = (float *)malloc_check(2 * n * sizeof(float)), *w = (float *)malloc_check(2 * cols * sizeof(float));
    float *y = (float *)malloc_check(n * sizeof(float)), *codes = (float *)malloc_check(n * sizeof(float));
    float *scales = (float *)malloc_check(rows * sizeof(float)), *gs = (float *)malloc_check(2 * rows * sizeof(float));
    fp8 *gc = (fp8 *)malloc_check(n);
    for (size_t i = 0; i < 2 * n; i++) { hx[i] = __float2bfloat16((float)rng_normal(seed + 50, i) * 2.0f + 0.3f); x[i] = __bfloat162float(hx[i]); }
    for (int i = 0; i < 2 * cols; i++) { hw[i] = __float2bfloat16(1.0f + 0.3f * (float)rng_normal(seed + 51, i)); w[i] = __bfloat162float(hw[i]); }
    bf16 *dx = (bf16 *)cuda_malloc(2 * n * sizeof(bf16)), *dw = (bf16 *)cuda_malloc(2 * cols * sizeof(bf16));
    float *ds = (float *)cuda_malloc(rows * sizeof(float)), *dstat = (float *)cuda_malloc(2 * rows * sizeof(float));
    fp8 *dc = (fp8 *)cuda_malloc(n), *dt = (fp8 *)cuda_malloc(n);
    float *dst = (float *)cuda_malloc(cols * sizeof(float));
    unsigned *amax = (unsigned *)cuda_malloc(cols * sizeof(unsigned));
    cuda_upload(dx, hx, 2 * n * sizeof(bf16));
    cuda_upload(dw, hw, 2 * cols * sizeof(bf16));
    for (int op = 0; op < 6; op++) {
        double mean[rows], rstd[rows];
        for (int r = 0; r < rows; r++) {
            const float *xr = x + (size_t)r * (op == 3 ? 2 * cols : cols), *pre = x + n + (size_t)r * cols;
            double mu = 0.0, var = 0.0;
            if (op == 0) { for (int c = 0; c < cols; c++) mu += xr[c]; mu /= cols; }
            for (int c = 0; c < cols; c++) var += (xr[c] - mu) * (xr[c] - mu);
            mean[r] = mu; rstd[r] = 1.0 / sqrt(var / cols + 1e-5);
            for (int c = 0; c < cols; c++) {
                double v = xr[c], u = xr[cols + c], k = sqrt(2.0 / M_PI), p = pre[c], th = tanh(k * (p + 0.044715 * p * p * p));
                int F = cols / 2, i = c % F;  // dswiglu: gate's gradient, then up's; g (rows, F)
                double g = x[(size_t)r * F + i], gate = pre[i], up = pre[F + i], sig = 1.0 / (1.0 + exp(-gate));
                y[(size_t)r * cols + c] = op < 2 ? (float)((v - mu) * rstd[r] * w[c] + (op == 0 ? w[cols + c] : 0.0))
                                        : op == 2 ? (float)(0.5 * v * (1.0 + tanh(k * (v + 0.044715 * v * v * v))))
                                        : op == 3 ? (float)(v / (1.0 + exp(-v)) * u)
                                        : op == 4 ? (float)(v * (0.5 * (1.0 + th) + 0.5 * p * (1.0 - th * th) * k * (1.0 + 3.0 * 0.044715 * p * p)))
                                        : (float)(c < F ? g * up * sig * (1.0 + gate * (1.0 - sig)) : g * gate * sig);
            }
        }
        RowSource src = op < 2 ? rows_norm(dx, dw, op == 0 ? dw + cols : NULL, op == 0 ? dstat : NULL, dstat + rows, 1e-5f, NULL)
                      : op < 4 ? rows_act(op == 2 ? ROWS_GELU : ROWS_SWIGLU, dx, NULL)
                               : rows_grad(op == 4 ? ROWS_DGELU : ROWS_DSWIGLU, dx, dx + n);
        for (int fi = 0; fi < 2; fi++) {
            Format f = fi ? FMT_E4M3 : FMT_E2M1;
            if (op < 4) quantize_rows(dc, NULL, ds, &src, rows, cols, f, 0);
            else quantize_grad(dc, ds, dt, dst, &src, NULL, NULL, rows, cols, f, amax, NULL, 0);
            cuda_download(gc, dc, n);
            cuda_download(gs, ds, rows * sizeof(float));
            quantize_matrix(codes, scales, y, rows, cols, f, 0, 0);
            double se = 0.0;
            long diff = 0, far = 0;
            for (int r = 0; r < rows; r++) se = fmax(se, fabs(gs[r] - scales[r]) / scales[r]);
            for (size_t i = 0; i < n; i++) {
                float g = byte_value(gc[i], f), c = codes[i];
                if (g == c) continue;
                diff++;
                for (int t = 1; t < 16; t++) {  // neighbours on the grid: everything between rounds to one of the two
                    float v = quant_round(c + (g - c) * t / 16.0f, f);
                    if (v != g && v != c) { far++; break; }
                }
            }
            CHECK(se <= 1e-5 && diff <= (long)(n / 1000) && far == 0, "fused %s -> %s: scales %.3g, %ld codes differ (%ld by more"
                  " than a grid step) of %zu", names[op], format_name(f), se, diff, far, n);
            printf("fused %s -> %s: scales within %.1e, %ld of %zu codes one step apart (FP32 vs FP64 at a boundary)\n",
                   names[op], format_name(f), se, diff, n);
        }
        if (op < 2) {
            float st[2 * rows];
            cuda_download(st, dstat, 2 * rows * sizeof(float));
            double e = 0.0;
            for (int r = 0; r < rows; r++) { e = fmax(e, fabs(st[rows + r] - rstd[r]) / rstd[r]); if (op == 0) e = fmax(e, fabs(st[r] - mean[r]) / 2.0); }
            CHECK(e <= 1e-5, "fused %s statistics error %.3g", names[op], e);
        }
    }
    cuda_free(dx, 2 * n * sizeof(bf16)); cuda_free(dw, 2 * cols * sizeof(bf16)); cuda_free(ds, rows * sizeof(float));
    cuda_free(dstat, 2 * rows * sizeof(float)); cuda_free(dc, n); cuda_free(dt, n); cuda_free(dst, cols * sizeof(float));
    cuda_free(amax, cols * sizeof(unsigned));
    free(hx); free(hw); free(x); free(w); free(y); free(codes); free(scales); free(gs); free(gc);
}

int main(void) {
    const int n = 1 << 22;
    float *x = (float *)malloc(n * sizeof(float)), *got = (float *)malloc(n * sizeof(float));
    float *dx, *dy;
    CUDA_CHECK(cudaMalloc(&dx, n * sizeof(float)));
    CUDA_CHECK(cudaMalloc(&dy, n * sizeof(float)));
    uint64_t seed = (uint64_t)time(NULL);  // fresh data every run; printed to reproduce
    printf("seed %llu\n", (unsigned long long)seed);
    for (Format f = FMT_BF16; f < NUM_FORMATS; f = (Format)(f + 1)) {
        float top = f == FMT_BF16 ? 1e4f : format_max(f);
        for (int i = 0; i < n; i++) {
            uint64_t h = rng_hash(seed + f, (uint64_t)i);
            if (i < 1024 && f != FMT_BF16 && format_is_fp4(f)) {  // grid points and midpoints
                int c = i % 8;
                float g = fp4_grid(f, c), g1 = c < 7 ? fp4_grid(f, c + 1) : g * 2;
                x[i] = (i & 8 ? -1.0f : 1.0f) * (i & 16 ? 0.5f * (g + g1) : g);
            } else {
                float u = rng_uniform(h), e = rng_uniform(rng_hash(seed + 100 + f, (uint64_t)i));
                x[i] = (u - 0.5f) * 2.5f * top * exp2f(-40.0f * e);
            }
        }
        CUDA_CHECK(cudaMemcpy(dx, x, n * sizeof(float), cudaMemcpyHostToDevice));
        CUDA_CHECK(cudaMemset(dy, 0xff, n * sizeof(float)));  // poison: NaN everywhere
        round_kernel<<<(n + 255) / 256, 256>>>(dy, dx, n, f);
        CUDA_CHECK(cudaGetLastError());
        CUDA_CHECK(cudaMemcpy(got, dy, n * sizeof(float), cudaMemcpyDeviceToHost));
        int bad = 0, first = -1;
        for (int i = 0; i < n; i++) {
            if (f32_bits(got[i]) != f32_bits(quant_round(x[i], f))) { if (first < 0) first = i; bad++; }
        }
        CHECK(bad == 0, "%s: %d of %d GPU roundings differ from the CPU (first x = %.9g: gpu %.9g cpu %.9g)", format_name(f),
              bad, n, first >= 0 ? x[first] : 0.0f, first >= 0 ? got[first] : 0.0f, first >= 0 ? quant_round(x[first], f) : 0.0f);
        if (!format_is_fp4(f)) { printf("%s: rounding bit-identical on %d inputs\n", format_name(f), n); continue; }
        for (int i = 0; i < n; i++) x[i] = (rng_uniform(rng_hash(seed + 200 + f, (uint64_t)i)) - 0.5f) * 2.0f * format_max(f);
        CUDA_CHECK(cudaMemcpy(dx, x, n * sizeof(float), cudaMemcpyHostToDevice));
        dge_kernel<<<(n + 255) / 256, 256>>>(dy, dx, n, f, 5.0f);
        CUDA_CHECK(cudaGetLastError());
        CUDA_CHECK(cudaMemcpy(got, dy, n * sizeof(float), cudaMemcpyDeviceToHost));
        int worst = 0;
        for (int i = 0; i < n; i++) { int d = ulp_distance(got[i], dge_derivative(x[i], f, 5.0f)); if (d > worst) worst = d; }
        CHECK(worst <= 4, "%s: DGE derivative differs from the CPU by %d ulp", format_name(f), worst);
        printf("%s: rounding bit-identical on %d inputs, DGE within %d ulp\n", format_name(f), n, worst);
    }
    CUDA_CHECK(cudaFree(dx)); CUDA_CHECK(cudaFree(dy));
    free(x); free(got);
    test_quantize(seed);
    test_fused_sources(seed);
    return check_summary("quant-gpu");
}
