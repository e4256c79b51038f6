// defines: QS_X, QS_CLAMPED, QS_W, QS_G, QS_DW, QS_N, quant_error_sums, dge_norm_sums, qstats_from_sums
// Quantization telemetry on the GPU (--quant-stats): the sums behind llmc/quant_stats.h's QErr
// for an operand the trainer just quantized (its codes and scales against the unquantized rows,
// which the source's producer makes again), and the weight gradient's norm before and after DGE.
// FP64 sums, added per warp (atomics: the last bits vary run to run; telemetry, not training).
// Table 1's five activation settings stay on the CPU trainer, which measures a checkpoint.
#ifndef LLMC_QUANT_ERROR_CUH
#define LLMC_QUANT_ERROR_CUH

#include "quantize.cuh"
#include "quant_stats.h"

// a linear's sums in one layer: for each of x, w, g the five of quant_error_kernel (rr, qq, rq, ee,
// the clamped count), then the two norms of dge_norm_kernel
enum { QS_X = 0, QS_W = 5, QS_G = 10, QS_CLAMPED = QS_X + 4, QS_DW = 15, QS_N = 17 };

__device__ inline void warp_add_doubles(double *sums, double *v, int n) {
    for (int i = 0; i < n; i++) {
        for (int o = 16; o > 0; o >>= 1) v[i] += __shfl_xor_sync(0xffffffffu, v[i], o);
        if (threadIdx.x % 32 == 0) atomicAdd(sums + i, v[i]);
    }
}

// A warp per row: x = the source's value times col_scale (NULL: ones), q = code * the row's
// scale, + bf16(x - clamp(x, bounds)) with comp (OCC's compensated residual; no bounds: none).
// sums[0..4] += x x, q q, x q, (x - q)^2, and the number of clamped entries. NORM reads the
// statistics the quantizer wrote.
template <int OP>
__global__ void quant_error_kernel(double *sums, RowSource in, const fp8 *codes, const float *scales, const float *col_scale,
                                   const float2 *bounds, int comp, __nv_fp8_interpretation_t fp8f, int rows, int cols) {
    int r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    double acc[5] = { 0.0, 0.0, 0.0, 0.0, 0.0 };
    if (r < rows) {
        float mu = OP == ROWS_NORM && in.mean ? in.mean[r] : 0.0f, rs = OP == ROWS_NORM ? in.rstd[r] : 1.0f, s = scales[r];
        float2 b = bounds ? bounds[r] : make_float2(-INFINITY, INFINITY);
        for (int c = lane * 8; c < cols; c += 256) {
            float v[8];
            src_values8<OP>(v, in, r, c, cols, mu, rs);
            for (int k = 0; k < 8; k++) {
                float x = v[k] * (col_scale ? col_scale[c + k] : 1.0f), xc = fminf(fmaxf(x, b.x), b.y);
                __half_raw h = __nv_cvt_fp8_to_halfraw(codes[(size_t)r * cols + c + k], fp8f);
                double q = (double)__half2float(__half(h)) * s + (comp ? (double)bf16_round(x - xc) : 0.0), e = (double)x - q;
                acc[0] += (double)x * x; acc[1] += q * q; acc[2] += (double)x * q; acc[3] += e * e; acc[4] += xc != x;
            }
        }
    }
    warp_add_doubles(sums, acc, 5);
}

// sums[0] += sum of dW^2, sums[1] += sum of (dW f'(W / s_w))^2 (k = 0: no DGE, f' = 1)
__global__ void dge_norm_kernel(double *sums, const float *dW, const bf16 *W, const float *scales, int rows, int cols, Format f,
                                float k) {
    double acc[2] = { 0.0, 0.0 };
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (size_t)rows * cols; i += (size_t)gridDim.x * blockDim.x) {
        float s = scales[i / cols], d = dW[i];
        float corr = k > 0.0f ? dge_factor(__bfloat162float(W[i]), s, f, k) : 1.0f;
        acc[0] += (double)d * d;
        acc[1] += (double)(d * corr) * (d * corr);
    }
    warp_add_doubles(sums, acc, 2);
}

// adds the error sums of codes (rows, cols, format f) with per-row scales against src's rows,
// times col_scale per column (NULL: ones), OCC's clamp bounds (NULL: none) and, with comp, the
// residual they cut off restored, to sums
static void quant_error_sums(double *sums, const RowSource *src, const fp8 *codes, const float *scales, const float *col_scale,
                             const float2 *bounds, int comp, int rows, int cols, Format f, cudaStream_t st) {
    void (*const kernel[])(double *, RowSource, const fp8 *, const float *, const float *, const float2 *, int,
                           __nv_fp8_interpretation_t, int, int) = {
        quant_error_kernel<ROWS_PLAIN>, quant_error_kernel<ROWS_NORM>, quant_error_kernel<ROWS_GELU>,
        quant_error_kernel<ROWS_SWIGLU>, quant_error_kernel<ROWS_DGELU>, quant_error_kernel<ROWS_DSWIGLU> };
    kernel[src->op]<<<ceil_div(rows, 8), 256, 0, st>>>(sums, *src, codes, scales, col_scale, bounds, comp, fp8_interp(f), rows, cols);
    CUDA_CHECK(cudaGetLastError());
}

static void dge_norm_sums(double *sums, const float *dW, const bf16 *W, const float *scales, int rows, int cols, Format f, float k,
                          cudaStream_t st) {
    dge_norm_kernel<<<min(ceil_div((long long)rows * cols, 256), 1024), 256, 0, st>>>(sums, dW, W, scales, rows, cols, f, k);
    CUDA_CHECK(cudaGetLastError());
}

// a linear's QStats from its sums; N tokens, M outputs, K inputs
static QStats qstats_from_sums(const double *s, int N, int M, int K) {
    QStats q;
    memset(&q, 0, sizeof(q));
    q.x = qerr_from_sums(s + QS_X, (double)N * K);
    q.w = qerr_from_sums(s + QS_W, (double)M * K);
    q.g = qerr_from_sums(s + QS_G, (double)N * M);
    q.clamped = s[QS_CLAMPED] / ((double)N * K);
    q.dw_raw = sqrt(s[QS_DW]);
    q.dw_dge = sqrt(s[QS_DW + 1]);
    return q;
}

#endif
