// A study of our FP8 GEMM (llmc/gemm_fp8.cuh): the kernel against an FP64 reference on random
// codes, and its speed beside cuBLASLt's OUTER_VEC_32F GEMM (the one the trainer runs elsewhere)
// on the trainer's shapes, in the same run, each promoted and with fast accumulation; then
// fcproj's dgrad with the dGELU epilogue and fc's gradient codes after it, against cuBLASLt's
// dgrad and quantize_grad's two passes over dGELU.
//
//   make dev/cuda/fp8_gemm && ./dev/cuda/fp8_gemm
//
// -DCLUSTER=1 builds the variant without clusters (times in dev/NOTES.md).
#include <algorithm>
#include "../../llmc/matmul.cuh"
#include "../../llmc/quantize.cuh"
#include "../../llmc/gemm_fp8.cuh"

static void our_gemm(bf16 *d, const fp8 *a, const float *sa, const fp8 *b, const float *sb, int M, int N, int K, int fast) {
    GemmFp8 p = { sa, sb, M, N, K, NULL, NULL, NULL, fast };
    fp8_gemm(d, a, b, NULL, &p, 0);
}

// FP64 reference, one thread per output
__global__ void reference_kernel(float *d, const fp8 *a, const float *sa, const fp8 *b, const float *sb, int M, int N, int K) {
    int n = blockIdx.x * blockDim.x + threadIdx.x, m = blockIdx.y;
    if (n >= N) return;
    double s = 0.0;
    for (int k = 0; k < K; k++)
        s += (double)__half2float(__half(__nv_cvt_fp8_to_halfraw(a[(size_t)m * K + k], __NV_E4M3))) *
             (double)__half2float(__half(__nv_cvt_fp8_to_halfraw(b[(size_t)n * K + k], __NV_E4M3)));
    d[(size_t)m * N + n] = (float)(s * sa[m] * sb[n]);
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t next_u32(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (uint32_t)(rng >> 16); }

// codes: E2M1 values (FP4 as the trainer feeds it) or any finite E4M3 byte
static void fill_codes(fp8 *h, size_t n, int fp4) {
    static const float grid[8] = { 0, 0.5f, 1, 1.5f, 2, 3, 4, 6 };
    for (size_t i = 0; i < n; i++) {
        if (fp4) {
            uint32_t r = next_u32();
            h[i] = __nv_cvt_float_to_fp8((r & 8 ? -1.0f : 1.0f) * grid[r & 7], __NV_SATFINITE, __NV_E4M3);
        } else {
            do h[i] = (fp8)(next_u32() & 0xFF); while ((h[i] & 0x7F) == 0x7F);
        }
    }
}

// the worst error of out against ref in units of BF16's rounding (2^-8 relative) plus 1e-6 of
// sum |a b| (mag) for FP32 summation, and where it is
static double worst_error(const bf16 *out, const float *ref, const float *mag, size_t n, size_t *where) {
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)__bfloat162float(out[i]) - ref[i]) / (ldexp(fabs(ref[i]), -8) + 1e-6 * mag[i]);
        if (!(err <= worst)) { worst = err; *where = i; }
    }
    return worst;
}

// ours and cuBLASLt against the FP64 reference on fresh codes. The tensor cores sum FP8
// products with fewer bits than FP32 (about 2^-13 of sum |a b| over wide-ranging E4M3 codes),
// so ours must be within the bound or no worse than 1.25 x cuBLASLt's worst
static int check(int M, int N, int K, int fp4, int fast) {
    size_t na = (size_t)M * K, nb = (size_t)N * K;
    fp8 *ha = (fp8 *)malloc(na), *hb = (fp8 *)malloc(nb);
    float *hsa = (float *)malloc(M * 4), *hsb = (float *)malloc(N * 4);
    fill_codes(ha, na, fp4);
    fill_codes(hb, nb, fp4);
    for (int i = 0; i < M; i++) hsa[i] = 0.01f + (next_u32() % 1000) / 1000.0f;
    for (int i = 0; i < N; i++) hsb[i] = 0.01f + (next_u32() % 1000) / 1000.0f;
    fp8 *da = (fp8 *)cuda_malloc(na), *db = (fp8 *)cuda_malloc(nb);
    float *dsa = (float *)cuda_malloc(M * 4), *dsb = (float *)cuda_malloc(N * 4), *dref = (float *)cuda_malloc((size_t)M * N * 4);
    float *dabs = (float *)cuda_malloc((size_t)M * N * 4);
    bf16 *dd = (bf16 *)cuda_malloc((size_t)M * N * 2);
    cuda_upload(da, ha, na); cuda_upload(db, hb, nb); cuda_upload(dsa, hsa, M * 4); cuda_upload(dsb, hsb, N * 4);
    bf16 *dlt = (bf16 *)cuda_malloc((size_t)M * N * 2);
    matmul_fp8(dlt, CUDA_R_16BF, db, CUDA_R_8F_E4M3, dsb, da, CUDA_R_8F_E4M3, dsa, N, M, K, NULL, 0.0f, NULL, NULL,
               CUBLASLT_EPILOGUE_DEFAULT, fast, 0);
    CUDA_CHECK(cudaMemset(dd, 0xFF, (size_t)M * N * 2));  // NaNs where nothing is written
    our_gemm(dd, da, dsa, db, dsb, M, N, K, fast);
    reference_kernel<<<dim3(ceil_div(N, 128), M), 128>>>(dref, da, dsa, db, dsb, M, N, K);
    // sum |a b| from the same kernel on the codes' magnitudes
    for (size_t i = 0; i < na; i++) ha[i] &= 0x7F;
    for (size_t i = 0; i < nb; i++) hb[i] &= 0x7F;
    cuda_upload(da, ha, na); cuda_upload(db, hb, nb);
    reference_kernel<<<dim3(ceil_div(N, 128), M), 128>>>(dabs, da, dsa, db, dsb, M, N, K);
    CUDA_CHECK(cudaDeviceSynchronize());
    float *ref = (float *)malloc((size_t)M * N * 4), *mag = (float *)malloc((size_t)M * N * 4);
    bf16 *out = (bf16 *)malloc((size_t)M * N * 2);
    cuda_download(ref, dref, (size_t)M * N * 4); cuda_download(mag, dabs, (size_t)M * N * 4); cuda_download(out, dd, (size_t)M * N * 2);
    bf16 *lt = (bf16 *)malloc((size_t)M * N * 2);
    cuda_download(lt, dlt, (size_t)M * N * 2);
    size_t at = 0, lt_at = 0;
    double worst = worst_error(out, ref, mag, (size_t)M * N, &at), lt_worst = worst_error(lt, ref, mag, (size_t)M * N, &lt_at);
    int pass = worst <= 1.0 || worst <= 1.25 * lt_worst;
    printf("check %5d x %5d x %5d %s%s: worst error %7.3f of the bound (cuBLASLt %7.3f)%s\n", M, N, K, fp4 ? "fp4 codes" : "e4m3     ",
           fast ? " fast" : "     ", worst, lt_worst, pass ? "" : " FAIL");
    if (!pass) printf("  at (%zu, %zu): %g, reference %g, cuBLASLt %g\n", at / N, at % N, __bfloat162float(out[at]), ref[at], __bfloat162float(lt[at]));
    free(lt);
    cuda_free(dlt, (size_t)M * N * 2);
    cuda_free(da, na); cuda_free(db, nb); cuda_free(dsa, M * 4); cuda_free(dsb, N * 4); cuda_free(dref, (size_t)M * N * 4);
    cuda_free(dabs, (size_t)M * N * 4); cuda_free(dd, (size_t)M * N * 2);
    free(ha); free(hb); free(hsa); free(hsb); free(ref); free(mag); free(out);
    return pass;
}

// milliseconds per call, the mean over reps after a warm-up
template <typename F> static float time_ms(F f, int reps) {
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0)); CUDA_CHECK(cudaEventCreate(&e1));
    f(); f();
    CUDA_CHECK(cudaEventRecord(e0));
    for (int i = 0; i < reps; i++) f();
    CUDA_CHECK(cudaEventRecord(e1));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float ms;
    CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    return ms / reps;
}

int main(void) {
    if (!fp8_gemm_supported()) die("fp8_gemm: needs a Hopper GPU (sm_90)");
    printf("fp8_gemm: %zu bytes of shared memory a CTA\n", GEMM_SMEM_BYTES);
    matmul_init();
    // correctness: whole tiles, ragged edges in every dimension, a long k
    const int shapes[][3] = { { 128, 128, 128 }, { 300, 200, 208 }, { 1000, 392, 784 }, { 512, 768, 3072 }, { 256, 256, 32768 } };
    int ok = 1;
    for (int s = 0; s < 5; s++)
        for (int fp4 = 1; fp4 >= 0; fp4--)
            for (int fast = 0; fast < 2; fast++) ok &= check(shapes[s][0], shapes[s][1], shapes[s][2], fp4, fast);

    // speed: the trainer's forward and dgrad GEMMs, GPT-2 124M at B = 32 and LLaMA 928M at B = 8
    struct { const char *name; int M, N, K; } bench[] = {
        { "gpt2 qkv fwd", 32768, 2304, 768 },    { "gpt2 attproj fwd", 32768, 768, 768 }, { "gpt2 fc fwd", 32768, 3072, 768 },
        { "gpt2 fcproj fwd", 32768, 768, 3072 }, { "gpt2 qkv dgrad", 32768, 768, 2304 },  { "gpt2 fc dgrad", 32768, 768, 3072 },
        { "gpt2 fcproj dgrad", 32768, 3072, 768 }, { "gpt2-350m fc fwd", 16384, 4096, 1024 },
        { "gpt2-350m fcproj fwd", 16384, 1024, 4096 }, { "llama qkv fwd", 8192, 6144, 2048 }, { "llama fc13 fwd", 8192, 11264, 2048 },
        { "llama fc2 fwd", 8192, 2048, 5632 },   { "llama fc13 dgrad", 8192, 2048, 11264 }, { "llama fc2 dgrad", 8192, 5632, 2048 },
        { "square 8192", 8192, 8192, 8192 },
    };
    size_t maxa = 0, maxb = 0, maxd = 0;
    for (auto &b : bench) {
        maxa = std::max(maxa, (size_t)b.M * b.K); maxb = std::max(maxb, (size_t)b.N * b.K); maxd = std::max(maxd, (size_t)b.M * b.N);
    }
    fp8 *a = (fp8 *)cuda_malloc(maxa), *b = (fp8 *)cuda_malloc(maxb);
    float *sa = (float *)cuda_malloc(32768 * 4), *sb = (float *)cuda_malloc(16384 * 4);
    bf16 *d = (bf16 *)cuda_malloc(maxd * 2);
    fp8 *h = (fp8 *)malloc(maxa > maxb ? maxa : maxb);
    fill_codes(h, maxa, 1); cuda_upload(a, h, maxa);
    fill_codes(h, maxb, 1); cuda_upload(b, h, maxb);
    float *hs = (float *)malloc(32768 * 4);
    for (int i = 0; i < 32768; i++) hs[i] = 0.5f + (next_u32() % 1000) / 1000.0f;
    cuda_upload(sa, hs, 32768 * 4); cuda_upload(sb, hs, 16384 * 4);
    printf("\n| GEMM | M x N x K | cuBLASLt ms (TFLOPS) | ours | ours / cuBLASLt | cuBLASLt fast_accum | ours fast | ours / cuBLASLt, fast |\n"
           "|---|---|---|---|---|---|---|---|\n");
    for (auto &g : bench) {
        double flop = 2.0 * g.M * g.N * g.K;
        // cuBLASLt's column-major D (N, M) is our row-major D (M, N); ours promotes as cuBLASLt does by default
        float lt[2];
        for (int fast = 0; fast < 2; fast++)
            lt[fast] = time_ms([&] { matmul_fp8(d, CUDA_R_16BF, b, CUDA_R_8F_E4M3, sb, a, CUDA_R_8F_E4M3, sa, g.N, g.M, g.K, NULL,
                                                0.0f, NULL, NULL, CUBLASLT_EPILOGUE_DEFAULT, fast, 0); }, 20);
        float ours[2];
        for (int fast = 0; fast < 2; fast++) ours[fast] = time_ms([&] { our_gemm(d, a, sa, b, sb, g.M, g.N, g.K, fast); }, 20);
        printf("| %s | %d x %d x %d | %.3f (%.0f) | %.3f (%.0f) | %.2fx | %.3f (%.0f) | %.3f (%.0f) | %.2fx |\n", g.name, g.M, g.N, g.K,
               lt[0], flop / lt[0] / 1e9, ours[0], flop / ours[0] / 1e9, lt[0] / ours[0], lt[1], flop / lt[1] / 1e9, ours[1],
               flop / ours[1] / 1e9, lt[1] / ours[1]);
    }

    // fcproj's dgrad and fc's gradient codes, GPT-2 124M at B = 32 (one layer of --own-gemm 0 / 1):
    // cuBLASLt's dgrad, then quantize_grad's two passes over dGELU (the gradient and pre read
    // twice), against our GEMM with the dGELU epilogue and the codes pass alone
    {
        const int M = 32768, N = 3072, K = 768, tiles = fp8_gemm_tiles_n(N);
        const size_t npart = grad_part_floats(M, N, tiles, GEMM_PART_ROWS);
        size_t n = (size_t)M * N;
        bf16 *pre = (bf16 *)cuda_malloc(n * 2), *hp = (bf16 *)malloc(n * 2);
        for (size_t i = 0; i < n; i++) hp[i] = __float2bfloat16(((int)(next_u32() % 2001) - 1000) / 250.0f);
        cuda_upload(pre, hp, n * 2);
        fp8 *codes = (fp8 *)cuda_malloc(n), *codes_t = (fp8 *)cuda_malloc(n);
        float *scales = (float *)cuda_malloc(M * 4), *scales_t = (float *)cuda_malloc(N * 4), *db = (float *)cuda_malloc(N * 4);
        float *partial = (float *)cuda_malloc(quantize_grad_scratch(M, N, 1) * 4);
        float *gpart = (float *)cuda_malloc(npart * 4);
        unsigned *amax = (unsigned *)cuda_malloc(N * 4);
        CUDA_CHECK(cudaMemset(db, 0, N * 4));
        GemmFp8 p = { sa, sb, M, N, K, sa, sb, gpart };
        auto lt_dgrad = [&] { matmul_fp8(d, CUDA_R_16BF, b, CUDA_R_8F_E4M3, sb, a, CUDA_R_8F_E4M3, sa, N, M, K, NULL, 0.0f, NULL, NULL,
                                         CUBLASLT_EPILOGUE_DEFAULT, 0, 0); };
        auto unfused_codes = [&] { RowSource g = rows_grad(ROWS_DGELU, d, pre);
                                   quantize_grad(codes, scales, codes_t, scales_t, &g, sb, sa, M, N, FMT_E4M3, 0, amax, db, partial, 0); };
        auto our_dgrad = [&] { fp8_gemm(d, a, b, pre, &p, 0); };
        auto fused_codes = [&] { RowSource g = rows_grad_part(d, gpart, tiles, GEMM_PART_ROWS);
                                 quantize_grad(codes, scales, codes_t, scales_t, &g, sb, sa, M, N, FMT_E4M3, 0, amax, db, partial, 0); };
        float t_lt = time_ms(lt_dgrad, 20), t_uc = time_ms(unfused_codes, 20), t_ours = time_ms(our_dgrad, 20);
        float t_fc = time_ms(fused_codes, 20), t_u = time_ms([&] { lt_dgrad(); unfused_codes(); }, 20);
        float t_f = time_ms([&] { our_dgrad(); fused_codes(); }, 20);
        printf("\n| fcproj dgrad + fc's gradient codes, %d x %d x %d | dgrad ms | codes ms | together ms |\n|---|---|---|---|\n", M, N, K);
        printf("| cuBLASLt, then quantize_grad over dGELU (two passes) | %.3f | %.3f | %.3f |\n", t_lt, t_uc, t_u);
        printf("| ours with the dGELU epilogue, then the codes pass | %.3f | %.3f | %.3f (%.2fx) |\n", t_ours, t_fc, t_f, t_u / t_f);
        cuda_free(pre, n * 2); cuda_free(codes, n); cuda_free(codes_t, n); cuda_free(scales, M * 4); cuda_free(scales_t, N * 4);
        cuda_free(db, N * 4); cuda_free(partial, quantize_grad_scratch(M, N, 1) * 4);
        cuda_free(gpart, npart * 4); cuda_free(amax, N * 4);
        free(hp);
    }
    printf("\n%s\n", ok ? "all checks passed" : "CHECKS FAILED");
    return ok ? 0 : 1;
}
