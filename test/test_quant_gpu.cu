// The element rules of llmc/quant.h run on the GPU must give the CPU's bits: every format's
// rounding on fresh random inputs (all magnitudes, every tie and grid point), and the DGE
// derivative within a few ulp (powf differs by an ulp or two between libm and CUDA).
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <cuda_runtime.h>
#include "../llmc/quant.h"
#include "../llmc/rand.h"
#include "check.h"

#define CUDA_CHECK(call) do { cudaError_t e_ = (call); if (e_ != cudaSuccess) { \
    printf("error: %s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); exit(1); } } while (0)

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
    return check_summary("quant-gpu");
}
