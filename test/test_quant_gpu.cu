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

// the three ways the trainer quantizes (SPEC.md 4) on fresh random BF16 data spanning 2^-20 ..
// 2^20 in scale, with zero, huge and tiny rows: per row (X, W); per row with a folded column
// scale (the dgrad gradient G * s_w); per column with a folded row scale, written transposed (the
// wgrad gradient G * s_x). Every scale and code must be the CPU quantize_matrix's, bit for bit.
static void test_quantize(uint64_t seed) {
    const int shapes[4][2] = { { 37, 64 }, { 128, 768 }, { 64, 3072 }, { 33, 50 } };
    const Format fmts[5] = { FMT_E2M1, FMT_E1M2, FMT_E3M0, FMT_E4M3, FMT_E5M2 };
    for (int si = 0; si < 4; si++) {
        int rows = shapes[si][0], cols = shapes[si][1];
        size_t n = (size_t)rows * cols;
        bf16 *xb = (bf16 *)malloc_check(n * sizeof(bf16));
        float *x = (float *)malloc_check(n * sizeof(float)), *xf = (float *)malloc_check(n * sizeof(float));
        float *codes = (float *)malloc_check(n * sizeof(float)), *fold = (float *)malloc_check((rows + cols) * sizeof(float));
        float *scales = (float *)malloc_check((rows + cols) * sizeof(float)), *gscales = (float *)malloc_check((rows + cols) * sizeof(float));
        fp8 *gcodes = (fp8 *)malloc_check(n);
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
        fp8 *dc = (fp8 *)cuda_malloc(n), *dt = (fp8 *)cuda_malloc(n);
        unsigned *amax = (unsigned *)cuda_malloc(cols * sizeof(unsigned));
        cuda_upload(dx, xb, n * sizeof(bf16));
        cuda_upload(dfold, fold, (rows + cols) * sizeof(float));
        for (int fi = 0; fi < 5; fi++) {
            Format f = fmts[fi];
            for (int mode = 0; mode < 3; mode++) {  // rows; rows with column scale; columns with row scale
                CUDA_CHECK(cudaMemset(ds, 0xff, (rows + cols) * sizeof(float)));  // poison
                CUDA_CHECK(cudaMemset(dc, 0x7f, n));
                int axis = mode == 2, nv = axis ? cols : rows;
                if (mode == 0) quantize_rows(dc, ds, dx, NULL, rows, cols, f, 0);
                if (mode == 1) quantize_rows(dc, ds, dx, dfold, rows, cols, f, 0);
                if (mode == 2) quantize_cols_t(dt, ds, amax, dx, dfold + cols, rows, cols, f, 0);
                if (mode == 2) transpose_bytes(dc, dt, cols, rows, 1, 0);  // back to (rows, cols)
                cuda_download(gcodes, dc, n);
                cuda_download(gscales, ds, nv * sizeof(float));
                for (int r = 0; r < rows; r++)
                    for (int c = 0; c < cols; c++)
                        xf[(size_t)r * cols + c] = x[(size_t)r * cols + c] * (mode == 1 ? fold[c] : mode == 2 ? fold[cols + r] : 1.0f);
                quantize_matrix(codes, scales, xf, rows, cols, f, axis, 0);
                int bad_s = 0, bad_c = 0;
                for (int v = 0; v < nv; v++) bad_s += f32_bits(scales[v]) != f32_bits(gscales[v]);
                for (size_t i = 0; i < n; i++) bad_c += f32_bits(byte_value(gcodes[i], f)) != f32_bits(codes[i]);
                const char *what[3] = { "quantize_rows", "quantize_rows (column scale)", "quantize_cols_t (row scale)" };
                CHECK(bad_s == 0 && bad_c == 0, "%s %s %dx%d: %d scales and %d codes differ from the CPU", what[mode],
                      format_name(f), rows, cols, bad_s, bad_c);
            }
        }
        printf("quantize %dx%d: per row, per row with folded column scales, per column transposed with folded row scales:"
               " scales and codes identical to the CPU for e2m1 e1m2 e3m0 e4m3 e5m2\n", rows, cols);
        cuda_free(dx, n * sizeof(bf16)); cuda_free(ds, (rows + cols) * sizeof(float)); cuda_free(dfold, (rows + cols) * sizeof(float));
        cuda_free(dc, n); cuda_free(dt, n); cuda_free(amax, cols * sizeof(unsigned));
        free(xb); free(x); free(xf); free(codes); free(fold); free(scales); free(gscales); free(gcodes);
    }
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
    return check_summary("quant-gpu");
}
