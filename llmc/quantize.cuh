// defines: fp8, fp8_type, fp8_interp, RowSource, GradPart, grad_part, grad_part_floats, rows_plain, rows_norm, rows_act, rows_grad, rows_grad_part,
//          quantize_rows, row_scales, GELU_NEG_ABSMAX, rows_codes, whole_rows, whole_rows_fit, CodesT, codes_transpose, quantize_grad_scratch, quantize_grad, dge_apply
// Vector-wise absmax quantization on the GPU (SPEC.md 4), bit-identical to the CPU's
// quantize_matrix: s = absmax / max of the format, codes = round(x / s) by the rules of quant.h,
// stored as FP8 bytes (4-bit codes are exact in E4M3, which is how Hopper's FP8 tensor cores run
// FP4). Hopper's FP8 GEMMs are TN only, so the codes a backward GEMM contracts over tokens come
// out transposed from the same pass. The producers of a linear's input (LayerNorm / RMSNorm,
// GELU, SwiGLU) and of its output gradient (dGELU, dSWIGLU) run inside the quantizer, so their
// BF16 outputs are never written. test/test_quant_gpu checks every kernel against the CPU.
//
// Layout of the work: an input row a warp can hold (a norm's or a plain one, up to 2048 columns)
// is read once, its scale and codes made from registers. Otherwise row scales come first, from a
// pass of their own (a warp per row for an input; for a gradient tiles of 128 rows by 256
// columns, which also reduce the columns). The codes kernel then gives each thread 4 adjacent
// columns of 32 rows: its loads are independent (memory in flight). Either way the block's
// transposed codes meet in shared memory and leave as whole 32-byte sectors, one a column.
#ifndef LLMC_QUANTIZE_CUH
#define LLMC_QUANTIZE_CUH

#include <cuda_fp8.h>
#include "cuda_common.cuh"
#include "quant.h"
#include "activations.cuh"

typedef __nv_fp8_storage_t fp8;

// the cuBLASLt type of a format's FP8 bytes
static cudaDataType fp8_type(Format f) { return f == FMT_E5M2 ? CUDA_R_8F_E5M2 : CUDA_R_8F_E4M3; }
// and the conversion intrinsics' name for them
static __nv_fp8_interpretation_t fp8_interp(Format f) { return f == FMT_E5M2 ? __NV_E5M2 : __NV_E4M3; }

// What a quantizer reads, row by row: BF16 rows as they are, or what a producer makes of them.
enum { ROWS_PLAIN, ROWS_NORM, ROWS_GELU, ROWS_SWIGLU, ROWS_DGELU, ROWS_DSWIGLU };
typedef struct {
    int op;
    const bf16 *x;       // (rows, cols); SWIGLU (rows, 2 cols) = [gate | up]; DGELU: the gradient of GELU's
                         // output (rows, cols); DSWIGLU: of SwiGLU's output (rows, cols / 2)
    const bf16 *pre;     // DGELU: GELU's input (rows, cols); DSWIGLU: SwiGLU's (rows, cols) = [gate | up]
    const bf16 *w, *b;   // NORM: weight, and bias (LayerNorm) or NULL (RMSNorm)
    float *mean, *rstd;  // NORM: (rows) statistics out, mean NULL for RMSNorm
    float eps;
    bf16 *out;           // where a BF16 linear wants the rows materialized; for DGELU / DSWIGLU, where
                         // OCC's compensation gradient wants them (quantize_grad's codes pass writes them)
    const float *part;   // PLAIN gradient: its first pass, made with it by its producer (a GEMM epilogue,
    int part_tiles;      // llmc/gemm_fp8.cuh, or the norm's backward, llmc/norm.cuh), laid out as grad_part
    int part_group;      // says, with part_tiles tiles a row and column partials of part_group rows.
                         // GELU: the row maxima of x by tile (rows, part_tiles), from fc's GEMM epilogue
} RowSource;

#define QROWS 32        // rows per block
#define QTHREADS 256    // at most, per block

// A gradient's first pass made elsewhere (RowSource.part), in one buffer: per row and tile of
// columns the maximum of |g col_scale| (rows, tiles); per column and group of rows the maximum of
// |g row_scale| and the sum of g (ceil(rows / group), cols) each
typedef struct { float *row_max, *col_max, *col_sum; } GradPart;
__host__ __device__ inline GradPart grad_part(float *part, int rows, int cols, int tiles, int group) {
    GradPart g;
    g.row_max = part;
    g.col_max = part + (size_t)rows * tiles;
    g.col_sum = g.col_max + (size_t)((rows + group - 1) / group) * cols;
    return g;
}
static size_t grad_part_floats(int rows, int cols, int tiles, int group) {
    return (size_t)rows * tiles + 2 * (size_t)ceil_div(rows, group) * cols;
}

// W (8 or 4) BF16 values in one 16- or 8-byte access
template <int W> struct Pack;
template <> struct Pack<8> { uint4 u; };
template <> struct Pack<4> { uint2 u; };
template <> struct Pack<2> { unsigned u; };
template <int W> __device__ inline Pack<W> pack_load(const bf16 *p) {
    Pack<W> r;
    r.u = *(const decltype(r.u) *)p;
    return r;
}
template <int W> __device__ inline void pack_floats(float *f, Pack<W> r) {
    const uint32_t *h = (const uint32_t *)&r.u;
    for (int k = 0; k < W / 2; k++) { float2 v = bf16x2_floats(h[k]); f[2 * k] = v.x; f[2 * k + 1] = v.y; }
}

// A source's values come in two steps, so a kernel can issue the loads of many rows before it
// computes anything: src_fetch loads the pieces of W values at row r, column c (a multiple of
// W), src_values makes the W values from them. w, b: NORM's weight and bias at c.
template <int OP> __device__ constexpr int src_loads() { return OP == ROWS_DSWIGLU ? 3 : OP == ROWS_SWIGLU || OP == ROWS_DGELU ? 2 : 1; }
// DSWIGLU's loads at column j of gate make the gradients of gate and up at j: two halves
template <int OP> __device__ constexpr int src_halves() { return OP == ROWS_DSWIGLU ? 2 : 1; }

template <int OP, int W>
__device__ inline void src_fetch(Pack<W> *raw, const RowSource &in, int r, int c, int cols) {
    if (OP == ROWS_SWIGLU) {
        const bf16 *xr = in.x + (size_t)r * 2 * cols;
        raw[0] = pack_load<W>(xr + c);
        raw[1] = pack_load<W>(xr + cols + c);
    } else if (OP == ROWS_DSWIGLU) {  // columns [0, F) are gate's gradient, [F, 2F) up's
        int F = cols / 2, j = c < F ? c : c - F;
        const bf16 *pr = in.pre + (size_t)r * cols;
        raw[0] = pack_load<W>(pr + j);
        raw[1] = pack_load<W>(pr + F + j);
        raw[2] = pack_load<W>(in.x + (size_t)r * F + j);
    } else {
        raw[0] = pack_load<W>(in.x + (size_t)r * cols + c);
        if (OP == ROWS_DGELU) raw[1] = pack_load<W>(in.pre + (size_t)r * cols + c);
    }
}

template <int OP, int W>
__device__ inline void src_values(float *v, const Pack<W> *raw, int c, int cols, const float *w, const float *b, float mu, float rs) {
    float u[W], d[W], dg, du;
    pack_floats<W>(v, raw[0]);
    if (OP == ROWS_SWIGLU) { pack_floats<W>(u, raw[1]); for (int k = 0; k < W; k++) v[k] = swiglu(v[k], u[k]); }
    if (OP == ROWS_DSWIGLU) {
        pack_floats<W>(u, raw[1]);
        pack_floats<W>(d, raw[2]);
        for (int k = 0; k < W; k++) { swiglu_grad(v[k], u[k], d[k], &dg, &du); v[k] = c < cols / 2 ? dg : du; }
    }
    if (OP == ROWS_GELU) for (int k = 0; k < W; k++) v[k] = gelu(v[k]);
    if (OP == ROWS_DGELU) { pack_floats<W>(u, raw[1]); for (int k = 0; k < W; k++) v[k] *= gelu_grad(u[k]); }
    if (OP == ROWS_NORM) for (int k = 0; k < W; k++) v[k] = (v[k] - mu) * rs * w[k] + b[k];
}

// NORM's weight and bias at columns c..c+W-1 (zeros for a missing bias)
template <int W> __device__ inline void norm_params(float *w, float *b, const RowSource &in, int c) {
    pack_floats<W>(w, pack_load<W>(in.w + c));
    if (in.b) pack_floats<W>(b, pack_load<W>(in.b + c));
    else for (int k = 0; k < W; k++) b[k] = 0.0f;
}

// |x| / s as the CPU divides (correctly rounded), without a division: s brought into [2^-60,
// 2^100] by an exact power of two (pre, applied to x too), RN(1 / s), a product within 1.5 ulp, a
// correction to within half an ulp plus a hair, and Markstein's step, which then rounds exactly
// (its residuals are exact FMAs, normal wherever the code can be nonzero). The sign joins after
// the rounding (with_sign), masked off for a zero scale, whose codes are +0 as the CPU's are.
typedef struct { float pre, s, rcp; uint32_t sign; } QScale;
__device__ inline QScale qscale(float s) {
    QScale q;
    q.pre = s == 0.0f ? 0.0f : s < 0x1p-60f ? 0x1p64f : s > 0x1p100f ? 0x1p-64f : 1.0f;
    q.s = s == 0.0f ? 1.0f : s * q.pre;
    q.rcp = __frcp_rn(q.s);
    q.sign = s == 0.0f ? 0u : 0x80000000u;
    return q;
}
__device__ inline float div_scale_abs(float x, QScale d) {
    float xp = fabsf(x) * d.pre, q = xp * d.rcp;
    q = fmaf(fmaf(-q, d.s, xp), d.rcp, q);
    return fmaf(fmaf(-q, d.s, xp), d.rcp, q);
}
// a non-negative q with the sign of x (none for a zero scale)
__device__ inline float with_sign(float q, float x, QScale d) { return __uint_as_float(__float_as_uint(q) | (__float_as_uint(x) & d.sign)); }

// How codes round, fixed per kernel (a template kind, so the loop has no branch on it): FP8
// formats in the conversion instruction itself; 4-bit layouts by quant.h's rule, then are exact in
// E4M3: those with a mantissa bit by the faster equivalent below, E3M0 by the rule itself
enum { QR_E4M3, QR_E5M2, QR_FP4, QR_E3M0, NUM_QR };
typedef struct { int mbits, emin; float maxv; } QRound;
static QRound qround(Format f) {
    QRound r = { 0, 0, 0.0f };
    if (format_is_fp4(f)) fp4_layout(f, &r.mbits, &r.emin, &r.maxv);
    return r;
}
static int qround_kind(Format f) { return f == FMT_E5M2 ? QR_E5M2 : f == FMT_E3M0 ? QR_E3M0 : format_is_fp4(f) ? QR_FP4 : QR_E4M3; }

// quant.h's 4-bit rounding of a magnitude, for layouts with a mantissa bit: adding and
// subtracting 1.5 times 2^23 grid steps rounds to the step, ties to even (the even multiple is
// the even code), the step taken from a's exponent, no smaller than the subnormal one. (E3M0's
// ties go to the even exponent, which is not the even multiple.)
__device__ inline float fp4_round_fast(float a, QRound r) {
    int e = max((int)(__float_as_uint(a) >> 23), 127 + r.emin);
    float big = __uint_as_float((unsigned)(e + 23 - r.mbits) << 23 | 0x400000u);
    float q = __fsub_rn(__fadd_rn(a, big), big);
    return a >= r.maxv ? r.maxv : q;  // NaN stays NaN
}

// the code of x / s, rounded by kind QR
template <int QR> __device__ inline float quant_value(float x, QScale s, QRound r) {
    float q = div_scale_abs(x, s);
    if (QR == QR_FP4) q = fp4_round_fast(q, r);
    if (QR == QR_E3M0) q = fp8_round(q, r.mbits, r.emin, r.maxv);
    return with_sign(q, x, s);
}

// FP8 bytes (low byte first) of the codes of a / sa and b / sb
template <int QR>
__device__ inline unsigned short quant_pair(float a, QScale sa, float b, QScale sb, QRound r) {
    return __nv_cvt_float2_to_fp8x2(make_float2(quant_value<QR>(a, sa, r), quant_value<QR>(b, sb, r)), __NV_SATFINITE,
                                    QR == QR_E5M2 ? __NV_E5M2 : __NV_E4M3);
}

// the 4 codes of v / s[k] (stride 0: one scale), as 4 bytes
template <int QR>
__device__ inline uint32_t quant4(const float *v, const QScale *s, int stride, QRound r) {
    return quant_pair<QR>(v[0], s[0], v[1], s[stride], r) | (uint32_t)quant_pair<QR>(v[2], s[2 * stride], v[3], s[3 * stride], r) << 16;
}

// the 4 x 4 bytes of q[4] (4 rows of 4 columns) transposed: t[k] holds column k's 4 rows
__device__ inline void transpose4(uint32_t *t, const uint32_t *q) {
    uint32_t lo01 = __byte_perm(q[0], q[1], 0x5140), hi01 = __byte_perm(q[0], q[1], 0x7362);
    uint32_t lo23 = __byte_perm(q[2], q[3], 0x5140), hi23 = __byte_perm(q[2], q[3], 0x7362);
    t[0] = __byte_perm(lo01, lo23, 0x5410);
    t[1] = __byte_perm(lo01, lo23, 0x7632);
    t[2] = __byte_perm(hi01, hi23, 0x5410);
    t[3] = __byte_perm(hi01, hi23, 0x7632);
}

// The maxima of 8 rows over a warp: each lane's partials pc[0..7] of rows j0..j0+7 (overwritten)
// by a butterfly, 9 shuffles for the 8 rows; out[j0 + i] gets row j0 + i's. Fixed order: the same
// bits run after run.
__device__ inline void warp_rows8_max(float *pc, float *out, int j0) {
    int lane = threadIdx.x % 32;
    #pragma unroll
    for (int o = 16, n = 4; o >= 4; o >>= 1, n >>= 1) {  // lanes with bit o keep the upper half of the rows
        int upper = lane & o;
        #pragma unroll
        for (int i = 0; i < n; i++) {
            float keep = upper ? pc[i + n] : pc[i], got = __shfl_xor_sync(0xffffffffu, upper ? pc[i] : pc[i + n], o);
            pc[i] = fmaxf(keep, got);
        }
    }
    for (int o = 2; o >= 1; o >>= 1) pc[0] = fmaxf(pc[0], __shfl_xor_sync(0xffffffffu, pc[0], o));  // lane l: row l / 4, over its 4 lanes
    if (lane % 4 == 0) out[j0 + lane / 4] = pc[0];
}

// a norm's statistics of row r, by a warp: LayerNorm the mean, then the variance about it (the
// row stays in L1 between the passes); RMSNorm the mean square. Lane 0 writes them out.
__device__ inline void norm_stats(const RowSource &in, int r, int cols, float *mu, float *rs) {
    int lane = threadIdx.x % 32;
    const bf16 *xr = in.x + (size_t)r * cols;
    float v[8], m = 0.0f, var = 0.0f;
    if (in.b) {
        #pragma unroll 4
        for (int c = lane * 8; c < cols; c += 256) { load8(v, xr + c); for (int k = 0; k < 8; k++) m += v[k]; }
        m = warp_sum(m) / cols;
    }
    #pragma unroll 4
    for (int c = lane * 8; c < cols; c += 256) { load8(v, xr + c); for (int k = 0; k < 8; k++) var += (v[k] - m) * (v[k] - m); }
    *mu = m;
    *rs = rsqrtf(warp_sum(var) / cols + in.eps);
    if (lane == 0) { if (in.mean) in.mean[r] = m; in.rstd[r] = *rs; }
}

// the 8 source values at column c (a multiple of 8) from their loads, NORM with statistics mu, rs
template <int OP>
__device__ inline void raw_values8(float *v, const Pack<8> *raw, const RowSource &in, int c, int cols, float mu, float rs) {
    float w[8], b[8];
    if (OP == ROWS_NORM) norm_params<8>(w, b, in, c);
    src_values<OP, 8>(v, raw, c, cols, w, b, mu, rs);
}
// and of row r, loaded
template <int OP>
__device__ inline void src_values8(float *v, const RowSource &in, int r, int c, int cols, float mu, float rs) {
    Pack<8> raw[src_loads<OP>()];
    src_fetch<OP, 8>(raw, in, r, c, cols);
    raw_values8<OP>(v, raw, in, c, cols, mu, rs);
}

// the largest magnitude of the source's row r (and a norm's statistics), over a warp
template <int OP> __device__ inline float row_absmax(const RowSource &in, int r, int cols) {
    int lane = threadIdx.x % 32;
    float mu = 0.0f, rs = 1.0f, amax = 0.0f, v[8];
    if (OP == ROWS_NORM) norm_stats(in, r, cols, &mu, &rs);
    #pragma unroll 4
    for (int c = lane * 8; c < cols; c += 256) {
        src_values8<OP>(v, in, r, c, cols, mu, rs);
        for (int k = 0; k < 8; k++) amax = fmaxf(amax, fabsf(v[k]));
    }
    return warp_max(amax);
}

// First pass of a linear input's quantization, a warp per row: the norm statistics and the
// scale, the absmax of the source row over the format's max
template <int OP>
__global__ void row_scales_kernel(float *scales, RowSource in, int rows, int cols, Format f) {
    int r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows) return;
    float amax = row_absmax<OP>(in, r, cols);
    if (threadIdx.x % 32 == 0) scales[r] = amax / format_max(f);
}

// GELU rows' scales from the row maxima of GELU's input by tile (in.part, in.part_tiles a row;
// fc's GEMM epilogue makes them, llmc/gemm_fp8.cuh), a warp per row, with no pass over the rows:
// GELU does not fall on x >= 0 over BF16 inputs, and left of 0 its magnitude stays below
// GELU_NEG_ABSMAX (test_quant_gpu checks both on every BF16 number), so a row whose gelu(max x)
// passes that has it as its absmax, the one row_scales would find. Other rows (small or all
// negative: rare in training) take every value's magnitude, as row_scales does.
#define GELU_NEG_ABSMAX 0.171f
__global__ void gelu_part_scales_kernel(float *scales, RowSource in, int rows, int cols, Format f) {
    int r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (r >= rows) return;
    float mx = -INFINITY;
    for (int t = lane; t < in.part_tiles; t += 32) mx = fmaxf(mx, in.part[(size_t)r * in.part_tiles + t]);
    float g = gelu(warp_max(mx));  // the same in every lane: the branch is the warp's
    float amax = g > GELU_NEG_ABSMAX ? g : row_absmax<ROWS_GELU>(in, r, cols);
    if (lane == 0) scales[r] = amax / format_max(f);
}

// OCC (llmc/occ.cuh): W values clamped to [lo, hi] in place, their residuals x - clamp(x) to d
template <int W> __device__ inline void occ_clamp(float *v, float *d, float lo, float hi) {
    for (int k = 0; k < W; k++) { float c = fminf(fmaxf(v[k], lo), hi); d[k] = v[k] - c; v[k] = c; }
}

// OCC's residuals d folded into 4 codes (q's bytes, E4M3) of a row with scale s (quant.h's
// occ_fold). Rare (a few percent of the words), so out of line: the codes loop stays small.
__device__ __noinline__ uint32_t fold4(uint32_t q, float4 d, QScale s) {
    float dk[4] = { d.x, d.y, d.z, d.w };
    for (int k = 0; k < 4; k++) {
        if (dk[k] == 0.0f) continue;
        float code = __half2float(__half(__nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)(q >> 8 * k & 0xffu), __NV_E4M3)));
        uint32_t b = __nv_cvt_float_to_fp8(occ_fold(code, with_sign(div_scale_abs(dk[k], s), dk[k], s)), __NV_SATFINITE, __NV_E4M3);
        q = (q & ~(0xffu << 8 * k)) | b << 8 * k;
    }
    return q;
}

// words between codes_kernel's planes of transposed words (one a group of 4 rows)
__host__ __device__ inline int codes_plane(int halves, int threads) { return halves * 4 * threads + 4; }

// The codes of a block of 32 rows, by MODE. CODES_GRAD (a gradient's, quantize_grad): codes
// (rows, cols) of the source * col_scale per row, with the row scales given, and codes_t (cols,
// rows) of the source * row_scale per column (the wgrad operand; scales_t from col_amax).
// CODES_ROWS (a linear's input or weight, rows_codes): codes of the source per row and codes_t the
// same codes transposed; CODES_OCC the same, with the values clamped to OCC's bounds first and
// their residual to resid (unless NULL) or, with fold, into the codes (occ_fold). Each thread: 4
// columns (DSWIGLU: 4 of gate's gradient and the same 4 of up's, which come from the same loads)
// of the 32 rows, 4 rows at a time with the next 4 rows' loads in flight. The rows loop stays
// rolled: unrolled, the kernel's code outgrew the instruction cache (ncu: half the stalls were
// instruction fetches). The transposed codes wait in shared memory (s_t) until the block has
// them all; then each column's 32 leave as one 32-byte sector, its halves from two adjacent lanes
// of the same store (from one thread, in two stores, each sector cost L2 two half-written
// requests: ncu had L2 at 80% of its throughput, DRAM at 61%). The modes and rounding kinds are
// template parameters: a branch on them in the loop cuts it into blocks the compiler cannot
// schedule across.
enum { CODES_ROWS, CODES_OCC, CODES_GRAD };
template <int OP, int MODE, int QR>
__global__ void __launch_bounds__(QTHREADS) codes_kernel(fp8 *codes, fp8 *codes_t, float *scales_t, const float *scales,
                                                         const unsigned *col_amax, RowSource in, const float *col_scale,
                                                         const float *row_scale, const float2 *bounds, bf16 *resid, int fold, int rows,
                                                         int cols, Format f, QRound qr) {
    // COLS: codes_t holds codes of their own, quantized per column
    const int NL = src_loads<OP>(), NH = src_halves<OP>(), G = QROWS / 4, COLS = MODE == CODES_GRAD, OCC = MODE == CODES_OCC;
    // word (g, h, k) of thread t: rows 4g..4g+3 of its column k of half h, at g * plane + (h * 4 + k) *
    // blockDim.x + t. The planes' 4 words of padding put rows 0-15 and 16-31 of a column in banks 16 apart.
    extern __shared__ uint32_t s_t[];
    const int plane = codes_plane(NH, blockDim.x);
    __shared__ QScale s_q[QROWS];
    __shared__ float s_rs[QROWS], s_mu[QROWS], s_rstd[QROWS];
    __shared__ float2 s_b[QROWS];
    int r0 = blockIdx.x * QROWS, c0 = blockIdx.y * blockDim.x * 4, c = c0 + threadIdx.x * 4, half = cols / NH;
    int live = c < half;  // a thread past the last column takes column 0 and writes nothing
    if (!live) c = 0;
    if (threadIdx.x < QROWS) {
        int j = threadIdx.x, r = min(r0 + j, rows - 1);
        s_q[j] = qscale(scales[r]);
        s_rs[j] = COLS && row_scale ? row_scale[r] : 1.0f;
        s_mu[j] = OP == ROWS_NORM && in.mean ? in.mean[r] : 0.0f;
        s_rstd[j] = OP == ROWS_NORM ? in.rstd[r] : 1.0f;
        s_b[j] = OCC ? bounds[r] : make_float2(0.0f, 0.0f);
    }
    __syncthreads();
    float cs[NH][4], w[4], b[4];
    QScale ts[NH][4];
    for (int h = 0; h < NH; h++)
        for (int k = 0; k < 4; k++) cs[h][k] = COLS && col_scale ? col_scale[h * half + c + k] : 1.0f;
    if (OP == ROWS_NORM) norm_params<4>(w, b, in, c);
    if (COLS) {
        for (int h = 0; h < NH; h++)
            for (int k = 0; k < 4; k++) {
                float sc = __uint_as_float(col_amax[h * half + c + k]) / format_max(f);
                ts[h][k] = qscale(sc);
                if (r0 == 0 && live) scales_t[h * half + c + k] = sc;
            }
    }
    uint32_t *t = s_t + threadIdx.x;
    Pack<4> cur[4][NL], next[4][NL];
    for (int i = 0; i < 4; i++) src_fetch<OP, 4>(cur[i], in, min(r0 + i, rows - 1), c, cols);
    #pragma unroll 1
    for (int g = 0; g < G; g++) {
        if (g + 1 < G)
            for (int i = 0; i < 4; i++) src_fetch<OP, 4>(next[i], in, min(r0 + 4 * g + 4 + i, rows - 1), c, cols);
        uint32_t q[NH][2][4];  // per half: the row codes and the column codes of the 4 rows
        #pragma unroll
        for (int i = 0; i < 4; i++) {
            int j = 4 * g + i;
            #pragma unroll
            for (int h = 0; h < NH; h++) {
                float v[4], u[4], d[4] = { 0.0f, 0.0f, 0.0f, 0.0f };
                src_values<OP, 4>(v, cur[i], h * half + c, cols, w, b, s_mu[j], s_rstd[j]);
                if (OCC) occ_clamp<4>(v, d, s_b[j].x, s_b[j].y);
                if (OCC && resid && live && r0 + j < rows) store_bf16<4>(resid + (size_t)(r0 + j) * cols + h * half + c, d);
                for (int k = 0; k < 4; k++) u[k] = COLS ? v[k] * cs[h][k] : v[k];
                q[h][0][i] = quant4<QR>(u, &s_q[j], 0, qr);
                if (OCC && fold && (d[0] != 0.0f || d[1] != 0.0f || d[2] != 0.0f || d[3] != 0.0f))
                    q[h][0][i] = fold4(q[h][0][i], make_float4(d[0], d[1], d[2], d[3]), s_q[j]);
                if (codes && live && r0 + j < rows) *(uint32_t *)(codes + (size_t)(r0 + j) * cols + h * half + c) = q[h][0][i];
                if (OP >= ROWS_DGELU && in.out && live && r0 + j < rows) store_bf16<4>(in.out + (size_t)(r0 + j) * cols + h * half + c, v);
                if (COLS) {
                    for (int k = 0; k < 4; k++) u[k] = v[k] * s_rs[j];
                    q[h][1][i] = quant4<QR>(u, ts[h], 1, qr);
                }
            }
        }
        if (codes_t)
            for (int h = 0; h < NH; h++) {
                uint32_t tw[4];
                transpose4(tw, q[h][COLS]);
                for (int k = 0; k < 4; k++) t[g * plane + (h * 4 + k) * blockDim.x] = tw[k];
            }
        for (int i = 0; i < 4; i++)
            for (int l = 0; l < NL; l++) cur[i][l] = next[i][l];
    }
    if (!codes_t) return;
    __syncthreads();
    // a column's half of the rows is a 16-byte store: adjacent lanes take a column's two halves,
    // and successive pairs the columns of successive threads (different banks)
    int nt = min((int)blockDim.x, (half - c0) / 4);  // live threads
    for (int h = 0; h < NH; h++)
        for (int k = 0; k < 4; k++)
            for (int p = threadIdx.x; p < 2 * nt; p += blockDim.x) {
                int hf = p & 1, tc = p >> 1;
                if (hf && rows - r0 <= 16) continue;  // rows are a multiple of 16
                const uint32_t *words = s_t + 4 * hf * plane + (h * 4 + k) * blockDim.x + tc;
                *(uint4 *)(codes_t + (size_t)(h * half + c0 + 4 * tc + k) * rows + r0 + 16 * hf) =
                    make_uint4(words[0], words[plane], words[2 * plane], words[3 * plane]);
            }
}
// Rows a warp holds whole (PLAIN and NORM sources up to WHOLE_COLS columns: the block linears'
// inputs of width C, the weights of K = C) take one pass where quantize_rows takes two: a warp
// reads a row once and makes its statistics, scale and codes from registers, the next row's loads
// in flight meanwhile; the block's 32 rows of codes meet in shared memory and leave transposed as
// codes_kernel's do, a column's 32 rows one sector from two adjacent lanes. A lane takes 8
// columns every 256, NC runs of them: norm_stats's order, so the statistics, and with them every
// code, are the two passes' bits (test_quant_gpu checks them against each other).
#define WHOLE_COLS 2048
template <int OP, int NC> __device__ inline void whole_fetch(Pack<8> *raw, const RowSource &in, int r, int cols) {
    int lane = threadIdx.x % 32;
    #pragma unroll
    for (int k = 0; k < NC; k++)
        if (lane * 8 + 256 * k < cols) src_fetch<OP, 8>(&raw[k], in, r, lane * 8 + 256 * k, cols);
}

template <int OP, int QR, int NC>
__global__ void __launch_bounds__(256) whole_rows_kernel(fp8 *codes, fp8 *codes_t, float *scales, RowSource in, int rows, int cols,
                                                         Format f, QRound qr) {
    extern __shared__ uint32_t s_c[];  // the block's rows of codes as words; an odd pitch puts a column's halves 16 banks apart
    const int RW = QROWS / 8, pitch = cols / 4 + 1;  // rows a warp
    // a norm's values (~6 instructions each) kept between the scale and the codes; made again where
    // that would leave one block an SM (NC = 8: 147-162 registers) or costs only an unpack (PLAIN)
    constexpr bool KEEP = OP == ROWS_NORM && NC <= 4;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r0 = blockIdx.x * QROWS;
    Pack<8> cur[NC], next[NC];
    whole_fetch<OP, NC>(cur, in, min(r0 + warp * RW, rows - 1), cols);
    #pragma unroll 1
    for (int i = 0; i < RW; i++) {
        int j = warp * RW + i, r = min(r0 + j, rows - 1), own = r0 + j < rows;
        if (i + 1 < RW) whole_fetch<OP, NC>(next, in, min(r + 1, rows - 1), cols);
        float v[8], x[KEEP ? NC : 1][8], mu = 0.0f, rs = 1.0f, amax = 0.0f;  // x: the row's values, or a run's
        if (OP == ROWS_NORM) {  // norm_stats's sums, from the registers
            float m = 0.0f, var = 0.0f;
            if (in.b) {
                #pragma unroll
                for (int k = 0; k < NC; k++)
                    if (lane * 8 + 256 * k < cols) { pack_floats<8>(v, cur[k]); for (int e = 0; e < 8; e++) m += v[e]; }
                m = warp_sum(m) / cols;
            }
            #pragma unroll
            for (int k = 0; k < NC; k++)
                if (lane * 8 + 256 * k < cols) { pack_floats<8>(v, cur[k]); for (int e = 0; e < 8; e++) var += (v[e] - m) * (v[e] - m); }
            mu = m;
            rs = rsqrtf(warp_sum(var) / cols + in.eps);
            if (lane == 0 && own) { if (in.mean) in.mean[r] = m; in.rstd[r] = rs; }
        }
        #pragma unroll
        for (int k = 0; k < NC; k++) {
            int c = lane * 8 + 256 * k;
            if (c >= cols) continue;
            float *xk = KEEP ? x[k] : x[0];
            raw_values8<OP>(xk, &cur[k], in, c, cols, mu, rs);
            for (int e = 0; e < 8; e++) amax = fmaxf(amax, fabsf(xk[e]));
        }
        float s = warp_max(amax) / format_max(f);
        if (lane == 0 && own) scales[r] = s;
        QScale q = qscale(s);
        #pragma unroll
        for (int k = 0; k < NC; k++) {
            int c = lane * 8 + 256 * k;
            if (c >= cols) continue;
            float *xk = KEEP ? x[k] : x[0];
            if (!KEEP) raw_values8<OP>(xk, &cur[k], in, c, cols, mu, rs);
            uint32_t lo = quant4<QR>(xk, &q, 0, qr), hi = quant4<QR>(xk + 4, &q, 0, qr);
            if (codes && own) *(uint2 *)(codes + (size_t)r * cols + c) = make_uint2(lo, hi);
            if (codes_t) { s_c[j * pitch + c / 4] = lo; s_c[j * pitch + c / 4 + 1] = hi; }
        }
        for (int k = 0; k < NC; k++) cur[k] = next[k];
    }
    if (!codes_t) return;
    __syncthreads();
    // work item p: rows 16 (p & 1).. of the 4 columns of word p / 2, transposed 4 x 4 at a time;
    // adjacent lanes store a column's two halves
    for (int p = threadIdx.x; p < cols / 2; p += blockDim.x) {
        int hf = p & 1, tc = p >> 1;
        if (hf && rows - r0 <= 16) continue;  // rows are a multiple of 16
        uint32_t w[16], t[4][4];
        for (int i = 0; i < 16; i++) w[i] = s_c[(16 * hf + i) * pitch + tc];
        for (int g = 0; g < 4; g++) transpose4(t[g], w + 4 * g);
        for (int k = 0; k < 4; k++)
            *(uint4 *)(codes_t + (size_t)(4 * tc + k) * rows + r0 + 16 * hf) = make_uint4(t[0][k], t[1][k], t[2][k], t[3][k]);
    }
}

// A gradient g (rows = tokens, cols = outputs), first pass, laid out as grad_part says (the
// layout the producers that make it themselves write, so the codes pass has one input): per row
// and tile the absmax of g * col_scale (the dgrad codes' scales), per column and GP_ROWS rows the
// absmax of g * row_scale (the wgrad codes' scales) and the sum of g (the bias gradient). A block
// takes a tile of GP_ROWS rows by 256 columns (DSWIGLU: 256 of gate's gradient and the same 256
// of up's, from one set of loads), a warp 16 of its rows, a lane 8 adjacent columns with 16-byte
// loads. Rows are reduced over their warp; columns in shared memory, over the warps in order: the
// same bits run after run. Nothing meets across the block but once, at its end, so an SM keeps
// its loads in flight: a block of 32 rows walking all of a row's columns in rounds, two meetings
// a round, ran qkv's gradient at ~1.5 TB/s (ncu: 0.7 eligible warps a scheduler).
#define GP_ROWS 128
#define GP_COLS 256
static int grad_part_tiles(int cols, int halves) { return ceil_div(cols / halves, GP_COLS); }
// the scratch quantize_grad's first pass takes (floats)
static size_t quantize_grad_scratch(int rows, int cols, int halves) {
    return grad_part_floats(rows, cols, grad_part_tiles(cols, halves), GP_ROWS);
}

template <int OP>
__global__ void __launch_bounds__(256, 2) grad_part_kernel(float *part, RowSource in, const float *col_scale, const float *row_scale,
                                                           int rows, int cols) {
    const int NL = src_loads<OP>(), NH = src_halves<OP>(), W = 8, V = NH * W, RW = GP_ROWS / 8;
    const int R = 8 / (NL == 3 ? 4 : NL);  // rows whose loads are in flight at once: 8, DGELU's 4, DSWIGLU's 2
    __shared__ float s_rows[8][RW], s_col[2][8][NH * GP_COLS];  // per warp: its rows' maxima; its columns' max and sum
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, half = cols / NH, tiles = gridDim.x;
    int r0 = blockIdx.y * GP_ROWS + warp * RW, c = blockIdx.x * GP_COLS + lane * 8, live = c < half;
    if (!live) c = 0;  // a lane past the last column reads column 0 and counts zeros
    GradPart gp = grad_part(part, rows, cols, tiles, GP_ROWS);
    float cs[V], cmax[V], csum[V];  // value k is column (k / W) * half + c + k % W
    for (int k = 0; k < V; k++) { cs[k] = col_scale ? col_scale[(k / W) * half + c + k % W] : 1.0f; cmax[k] = 0.0f; csum[k] = 0.0f; }
    #pragma unroll 1
    for (int j0 = 0; j0 < RW; j0 += 8) {
        float pc[8];  // rows j0..j0+7: this lane's max of |g col_scale|
        #pragma unroll
        for (int b = 0; b < 8; b += R) {
            Pack<W> raw[R][NL];
            #pragma unroll
            for (int i = 0; i < R; i++) src_fetch<OP, W>(raw[i], in, min(r0 + j0 + b + i, rows - 1), c, cols);
            #pragma unroll
            for (int i = 0; i < R; i++) {
                int r = r0 + j0 + b + i;
                float v[V], rs = row_scale && r < rows ? row_scale[r] : 1.0f;
                for (int h = 0; h < NH; h++) src_values<OP, W>(v + h * W, raw[i], h * half + c, cols, NULL, NULL, 0.0f, 1.0f);
                if (r >= rows || !live) for (int k = 0; k < V; k++) v[k] = 0.0f;
                pc[b + i] = 0.0f;
                for (int k = 0; k < V; k++) {
                    pc[b + i] = fmaxf(pc[b + i], fabsf(v[k] * cs[k]));
                    cmax[k] = fmaxf(cmax[k], fabsf(v[k] * rs));
                    csum[k] += v[k];
                }
            }
        }
        warp_rows8_max(pc, s_rows[warp], j0);
    }
    __syncwarp();
    if (lane < RW && r0 + lane < rows) gp.row_max[(size_t)(r0 + lane) * tiles + blockIdx.x] = s_rows[warp][lane];
    // a lane's columns in the tile's order (half h's 8 lane-adjacent runs), then each thread one
    // column over the 8 warps
    for (int h = 0; h < NH; h++)
        for (int k = 0; k < W; k += 4) {
            *(float4 *)&s_col[0][warp][h * GP_COLS + lane * 8 + k] = make_float4(cmax[h * W + k], cmax[h * W + k + 1], cmax[h * W + k + 2], cmax[h * W + k + 3]);
            *(float4 *)&s_col[1][warp][h * GP_COLS + lane * 8 + k] = make_float4(csum[h * W + k], csum[h * W + k + 1], csum[h * W + k + 2], csum[h * W + k + 3]);
        }
    __syncthreads();
    for (int i = threadIdx.x; i < NH * GP_COLS; i += blockDim.x) {
        int h = i / GP_COLS, col = blockIdx.x * GP_COLS + i % GP_COLS;
        if (col >= half) continue;
        float mx = s_col[0][0][i], sm = s_col[1][0][i];
        for (int w = 1; w < 8; w++) { mx = fmaxf(mx, s_col[0][w][i]); sm += s_col[1][w][i]; }
        size_t at = (size_t)blockIdx.y * cols + h * half + col;
        gp.col_max[at] = mx;
        gp.col_sum[at] = sm;
    }
}

// Tensor-wise scaling (the naive-FP4 ablation): every entry of v, n scales or absmax bits, becomes
// their maximum. They are non-negative floats, whose order is their bits' order; and the largest
// of the rows' absmax / max is the tensor's absmax / max (the division rounds monotonically), the
// CPU's tensor-wise scale exactly. One block: n is a tensor's rows or columns.
__global__ void broadcast_max_kernel(unsigned *v, int n) {
    __shared__ unsigned s_max;
    if (threadIdx.x == 0) s_max = 0;
    __syncthreads();
    unsigned m = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) m = max(m, v[i]);
    for (int o = 16; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (threadIdx.x % 32 == 0) atomicMax(&s_max, m);
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) v[i] = s_max;
}
static void broadcast_max(unsigned *v, int n, cudaStream_t st) {
    broadcast_max_kernel<<<1, 1024, 0, st>>>(v, n);
    CUDA_CHECK(cudaGetLastError());
}

// out (rows, cols) += g * f'(W / s_w): the DGE correction of a micro-batch's weight gradient as it
// joins the step's sum (SPEC.md 4). 8 entries a thread (cols is a multiple of 8): 16-byte
// accesses, one row scale.
__global__ void dge_apply_kernel(float *out, const float *g, const bf16 *W, const float *scales, int rows, int cols, Format f,
                                 float k) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= (size_t)rows * cols) return;
    float s = scales[i / cols], w[8];
    const float4 *gp = (const float4 *)(g + i);
    float4 g0 = gp[0], g1 = gp[1], *op = (float4 *)(out + i), o0 = op[0], o1 = op[1];
    float v[8] = { g0.x, g0.y, g0.z, g0.w, g1.x, g1.y, g1.z, g1.w }, o[8] = { o0.x, o0.y, o0.z, o0.w, o1.x, o1.y, o1.z, o1.w };
    load8(w, W + i);
    for (int j = 0; j < 8; j++) o[j] += v[j] * dge_factor(w[j], s, f, k);
    op[0] = make_float4(o[0], o[1], o[2], o[3]);
    op[1] = make_float4(o[4], o[5], o[6], o[7]);
}

static void check_quantize(const char *who, Format f, int rows, int cols, int transposed) {
    if (format_max(f) == 0.0f) die("%s: %s is not a scaled format", who, format_name(f));
    if (cols % 8 != 0 || (transposed && rows % 16 != 0))
        die("%s: %d x %d needs columns in multiples of 8 and, transposed, rows in multiples of 16", who, rows, cols);
}

// Threads per block: a row's groups of width columns spread evenly over blocks of at most
// max_threads (the reduction needs whole rows; the codes kernel takes runs of columns, blockIdx.y)
static int quantize_threads(int cols, int width, int max_threads, int *runs) {
    int groups = cols / width, n = ceil_div(groups, max_threads);
    if (runs) *runs = n;
    return ceil_div(ceil_div(groups, n), 32) * 32;
}

// codes_kernel's instances by source (ROWS_*): a linear input's or weight's, and a gradient's
typedef void (*CodesKernel)(fp8 *, fp8 *, float *, const float *, const unsigned *, RowSource, const float *, const float *,
                            const float2 *, bf16 *, int, int, int, Format, QRound);
template <int MODE, int QR>
static const CodesKernel row_codes[4] = { codes_kernel<ROWS_PLAIN, MODE, QR>, codes_kernel<ROWS_NORM, MODE, QR>,
                                          codes_kernel<ROWS_GELU, MODE, QR>, codes_kernel<ROWS_SWIGLU, MODE, QR> };
template <int QR>
static const CodesKernel grad_codes[3] = { codes_kernel<ROWS_PLAIN, CODES_GRAD, QR>, codes_kernel<ROWS_DGELU, CODES_GRAD, QR>,
                                           codes_kernel<ROWS_DSWIGLU, CODES_GRAD, QR> };

// a codes_kernel launch: blocks of 32 rows by runs of columns, and the transposed words' shared memory
static void codes_launch(dim3 *grid, int *threads, size_t *smem, int rows, int cols, int halves) {
    int runs;
    *threads = quantize_threads(cols / halves, 4, QTHREADS / halves, &runs);
    *grid = dim3(ceil_div(rows, QROWS), runs);
    *smem = (size_t)QROWS / 4 * codes_plane(halves, *threads) * sizeof(uint32_t);
}

// the second pass of quantize_rows: the codes of the source's rows from their scales (with OCC's
// bounds: clamped to them first, and their residual into resid, (rows, cols), unless NULL, or with
// fold into the codes)
static void rows_codes(fp8 *codes, fp8 *codes_t, const float *scales, const RowSource *src, const float2 *bounds, bf16 *resid,
                       int fold, int rows, int cols, Format f, cudaStream_t st) {
    if (fold && !bounds) die("rows_codes: OCC's residual folds into codes clamped to bounds");
    if (bounds && !format_is_fp4(f)) die("rows_codes: OCC's bounds come with 4-bit codes");
    const CodesKernel *kernels[2][NUM_QR] = {
        { row_codes<CODES_ROWS, QR_E4M3>, row_codes<CODES_ROWS, QR_E5M2>, row_codes<CODES_ROWS, QR_FP4>, row_codes<CODES_ROWS, QR_E3M0> },
        { NULL, NULL, row_codes<CODES_OCC, QR_FP4>, row_codes<CODES_OCC, QR_E3M0> } };
    dim3 grid; int threads; size_t smem;
    codes_launch(&grid, &threads, &smem, rows, cols, 1);
    kernels[bounds != NULL][qround_kind(f)][src->op]<<<grid, threads, smem, st>>>(
        codes, codes_t, NULL, scales, NULL, *src, NULL, NULL, bounds, resid, fold, rows, cols, f, qround(f));
    CUDA_CHECK(cudaGetLastError());
}

// Codes already made, transposed: dst (cols, rows) = src (rows, cols)^T, bytes as they are, for
// up to CT_MATS matrices in one launch (a layer's weights for the dgrad: made in one launch per
// linear for all layers, their transposed copies per layer, where one launch per weight left most
// SMs idle). A block takes a tile of 64 x 64 bytes through shared memory.
#define CT_MATS 4
#define CT_TILE 64
typedef struct { const fp8 *src; fp8 *dst; int rows, cols; } CodesT;
typedef struct { CodesT m[CT_MATS]; int first[CT_MATS + 1]; int n; } CodesTBatch;  // first: each matrix's first tile

__global__ void __launch_bounds__(256) codes_transpose_kernel(CodesTBatch b) {
    __shared__ uint32_t s[CT_TILE][CT_TILE / 4 + 1];  // the tile's rows as words; the pad staggers the banks
    // the block's matrix, by constant indices only (a variable index into the parameters copies
    // them to local memory)
    CodesT m = b.m[0];
    int first = 0;
    #pragma unroll
    for (int k = 1; k < CT_MATS; k++)
        if (k < b.n && (int)blockIdx.x >= b.first[k]) { m = b.m[k]; first = b.first[k]; }
    int tiles_c = (m.cols + CT_TILE - 1) / CT_TILE, t = blockIdx.x - first;
    int r0 = t / tiles_c * CT_TILE, c0 = t % tiles_c * CT_TILE;
    // rows and columns are multiples of 8 (codes_transpose): an 8-byte chunk is all in or all out
    for (int q = threadIdx.x; q < CT_TILE * CT_TILE / 8; q += blockDim.x) {
        int r = q / 8, c = 8 * (q % 8);
        if (r0 + r < m.rows && c0 + c < m.cols) {
            uint2 v = *(const uint2 *)((const uint8_t *)m.src + (size_t)(r0 + r) * m.cols + c0 + c);
            s[r][c / 4] = v.x; s[r][c / 4 + 1] = v.y;
        }
    }
    __syncthreads();
    // a thread a 4 x 4 block: rows 4 rb.., word cw of each, out as word rb of dst rows 4 cw.. (a
    // warp's 16 rb are 64 contiguous bytes of a dst row)
    int rb = threadIdx.x % 16, cw = threadIdx.x / 16;
    if (r0 + 4 * rb < m.rows && c0 + 4 * cw < m.cols) {
        uint32_t q[4] = { s[4 * rb][cw], s[4 * rb + 1][cw], s[4 * rb + 2][cw], s[4 * rb + 3][cw] }, w[4];
        transpose4(w, q);
        for (int i = 0; i < 4; i++) *(uint32_t *)((uint8_t *)m.dst + (size_t)(c0 + 4 * cw + i) * m.rows + r0 + 4 * rb) = w[i];
    }
}

static void codes_transpose(const CodesT *mats, int n, cudaStream_t st) {
    if (n < 1 || n > CT_MATS) die("codes_transpose: %d matrices (1 to %d)", n, CT_MATS);
    CodesTBatch b;
    memset(&b, 0, sizeof(b));
    b.n = n;
    for (int k = 0; k < n; k++) {
        if (mats[k].rows % 16 != 0 || mats[k].cols % 8 != 0)
            die("codes_transpose: %d x %d needs rows in multiples of 16 and columns of 8", mats[k].rows, mats[k].cols);
        b.m[k] = mats[k];
        b.first[k + 1] = b.first[k] + ceil_div(mats[k].rows, CT_TILE) * ceil_div(mats[k].cols, CT_TILE);
    }
    codes_transpose_kernel<<<b.first[n], 256, 0, st>>>(b);
    CUDA_CHECK(cudaGetLastError());
}

// the first of quantize_rows' two passes: the scales (rows) of the source's rows, and a norm's statistics
static void row_scales(float *scales, const RowSource *src, int rows, int cols, Format f, cudaStream_t st) {
    void (*const kernel[])(float *, RowSource, int, int, Format) = {
        row_scales_kernel<ROWS_PLAIN>, row_scales_kernel<ROWS_NORM>, row_scales_kernel<ROWS_GELU>, row_scales_kernel<ROWS_SWIGLU> };
    if (src->part && src->op != ROWS_GELU) die("row_scales: row maxima come only with GELU rows");
    (src->part ? gelu_part_scales_kernel : kernel[src->op])<<<ceil_div(rows, 8), 256, 0, st>>>(scales, *src, rows, cols, f);
    CUDA_CHECK(cudaGetLastError());
}

// quantize_rows in one pass, for a PLAIN or NORM source of at most WHOLE_COLS columns
typedef void (*WholeKernel)(fp8 *, fp8 *, float *, RowSource, int, int, Format, QRound);
template <int NC>
static const WholeKernel whole_kernels[NUM_QR][2] = {
    { whole_rows_kernel<ROWS_PLAIN, QR_E4M3, NC>, whole_rows_kernel<ROWS_NORM, QR_E4M3, NC> },
    { whole_rows_kernel<ROWS_PLAIN, QR_E5M2, NC>, whole_rows_kernel<ROWS_NORM, QR_E5M2, NC> },
    { whole_rows_kernel<ROWS_PLAIN, QR_FP4, NC>, whole_rows_kernel<ROWS_NORM, QR_FP4, NC> },
    { whole_rows_kernel<ROWS_PLAIN, QR_E3M0, NC>, whole_rows_kernel<ROWS_NORM, QR_E3M0, NC> } };
static int whole_rows_fit(const RowSource *src, int cols) { return (src->op == ROWS_PLAIN || src->op == ROWS_NORM) && cols <= WHOLE_COLS; }
static void whole_rows(fp8 *codes, fp8 *codes_t, float *scales, const RowSource *src, int rows, int cols, Format f, cudaStream_t st) {
    if (!whole_rows_fit(src, cols)) die("whole_rows: source %d with %d columns is not held whole by a warp", src->op, cols);
    int wide = cols > WHOLE_COLS / 2, kind = qround_kind(f), op = src->op == ROWS_NORM;
    WholeKernel kernel = (wide ? whole_kernels<WHOLE_COLS / 256> : whole_kernels<WHOLE_COLS / 512>)[kind][op];
    size_t smem = codes_t ? (size_t)QROWS * (cols / 4 + 1) * sizeof(uint32_t) : 0;
    static int allowed[NUM_QR][2];  // the wide kernels' rows of codes pass 48 KB
    if (wide && !allowed[kind][op]) {
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, QROWS * (WHOLE_COLS / 4 + 1) * 4));
        allowed[kind][op] = 1;
    }
    kernel<<<ceil_div(rows, QROWS), 256, smem, st>>>(codes, codes_t, scales, *src, rows, cols, f, qround(f));
    CUDA_CHECK(cudaGetLastError());
}

// the source's rows quantized per row (tensor: with one scale for all): codes (rows, cols) and / or
// codes_t (cols, rows) (neither: the scales alone), and scales (rows). One pass where a warp holds
// a row (whole_rows); two otherwise, the row scales (and norm statistics), then the codes.
static void quantize_rows(fp8 *codes, fp8 *codes_t, float *scales, const RowSource *src, int rows, int cols, Format f,
                          int tensor, cudaStream_t st) {
    check_quantize("quantize_rows", f, rows, cols, codes_t != NULL);
    if (src->op > ROWS_SWIGLU) die("quantize_rows: source %d is a gradient's (quantize_grad)", src->op);
    if (!tensor && whole_rows_fit(src, cols)) { whole_rows(codes, codes_t, scales, src, rows, cols, f, st); return; }
    row_scales(scales, src, rows, cols, f, st);
    if (tensor) broadcast_max((unsigned *)scales, rows, st);
    if (codes || codes_t) rows_codes(codes, codes_t, scales, src, NULL, NULL, 0, rows, cols, f, st);
}

// The end of a gradient's first pass (p, prows groups of rows, tiles a row), in one launch of 32 x
// 32 blocks: the first ceil(cols / 32) take 32 columns each, their maxima to amax (as float bits)
// and, with db, their sums added to it; the others 1024 rows each, their scales from the maxima
// over the tiles
__global__ void grad_part_finish_kernel(float *scales, unsigned *amax, float *db, GradPart p, int rows, int cols, int tiles,
                                        int prows, Format f) {
    int colblocks = (cols + 31) / 32;
    if ((int)blockIdx.x < colblocks) {
        int c = blockIdx.x * 32 + threadIdx.x;
        float mx = reduce_rows_block<1>(p.col_max, prows, cols, cols, blockIdx.x * 32);
        float sm = db ? reduce_rows_block<0>(p.col_sum, prows, cols, cols, blockIdx.x * 32) : 0.0f;
        if (threadIdx.y == 0 && c < cols) {
            amax[c] = __float_as_uint(mx);
            if (db) db[c] += sm;
        }
        return;
    }
    int r = (blockIdx.x - colblocks) * 1024 + threadIdx.y * 32 + threadIdx.x;
    if (r >= rows) return;
    float m = 0.0f;
    for (int t = 0; t < tiles; t++) m = fmaxf(m, p.row_max[(size_t)r * tiles + t]);
    scales[r] = m / format_max(f);
}

// A gradient g from src (PLAIN, DGELU or DSWIGLU), (rows, cols), in two passes: codes (rows, cols)
// of g * col_scale per row with scales (rows), for dgrad; codes_t (cols, rows) of g * row_scale
// per column with scales_t (cols), for wgrad. col_scale and row_scale may be NULL (ones). With
// db: the column sums of g are added to it (the bias gradient). amax: (cols) scratch; partial:
// quantize_grad_scratch(rows, cols, halves) floats of scratch for the first pass. tensor: one
// scale for all of each of the two. A PLAIN source with its first pass (src->part) runs only the
// codes pass.
static void quantize_grad(fp8 *codes, float *scales, fp8 *codes_t, float *scales_t, const RowSource *src, const float *col_scale,
                          const float *row_scale, int rows, int cols, Format f, int tensor, unsigned *amax, float *db,
                          float *partial, cudaStream_t st) {
    check_quantize("quantize_grad", f, rows, cols, 1);
    if (src->op == ROWS_DSWIGLU && cols % 16 != 0) die("quantize_grad: SwiGLU width %d is not a multiple of 8", cols / 2);
    int g = src->op == ROWS_PLAIN ? 0 : src->op == ROWS_DGELU ? 1 : src->op == ROWS_DSWIGLU ? 2 : -1;
    if (g < 0) die("quantize_grad: source %d is not a gradient", src->op);
    const CodesKernel *kernels[NUM_QR] = { grad_codes<QR_E4M3>, grad_codes<QR_E5M2>, grad_codes<QR_FP4>, grad_codes<QR_E3M0> };
    int halves = src->op == ROWS_DSWIGLU ? 2 : 1, threads;  // src_halves: a thread's 4 columns in each half
    dim3 grid; size_t smem;
    codes_launch(&grid, &threads, &smem, rows, cols, halves);
    GradPart p;
    int tiles = src->part_tiles, group = src->part_group;
    if (src->part) {
        if (g != 0) die("quantize_grad: a first pass comes only with a plain gradient");
        p = grad_part((float *)src->part, rows, cols, tiles, group);
    } else {
        void (*const first[])(float *, RowSource, const float *, const float *, int, int) = {
            grad_part_kernel<ROWS_PLAIN>, grad_part_kernel<ROWS_DGELU>, grad_part_kernel<ROWS_DSWIGLU> };
        if (!partial) die("quantize_grad: the first pass needs its scratch");
        tiles = grad_part_tiles(cols, halves);
        group = GP_ROWS;
        first[g]<<<dim3(tiles, ceil_div(rows, GP_ROWS)), 256, 0, st>>>(partial, *src, col_scale, row_scale, rows, cols);
        p = grad_part(partial, rows, cols, tiles, group);
    }
    grad_part_finish_kernel<<<ceil_div(cols, 32) + ceil_div(rows, 1024), dim3(32, 32), 0, st>>>(scales, amax, db, p, rows, cols, tiles,
                                                                                              ceil_div(rows, group), f);
    if (tensor) { broadcast_max((unsigned *)scales, rows, st); broadcast_max(amax, cols, st); }
    kernels[qround_kind(f)][g]<<<grid, threads, smem, st>>>(codes, codes_t, scales_t, scales, amax, *src, col_scale, row_scale,
                                                               NULL, NULL, 0, rows, cols, f, qround(f));
    CUDA_CHECK(cudaGetLastError());
}

static RowSource rows_plain(const bf16 *x) {
    RowSource s; memset(&s, 0, sizeof(s));
    s.op = ROWS_PLAIN; s.x = x;
    return s;
}
static RowSource rows_norm(const bf16 *x, const bf16 *w, const bf16 *b, float *mean, float *rstd, float eps, bf16 *out) {
    RowSource s; memset(&s, 0, sizeof(s));
    s.op = ROWS_NORM; s.x = x; s.w = w; s.b = b; s.mean = mean; s.rstd = rstd; s.eps = eps; s.out = out;
    return s;
}
static RowSource rows_act(int op, const bf16 *x, bf16 *out) {
    RowSource s; memset(&s, 0, sizeof(s));
    s.op = op; s.x = x; s.out = out;
    return s;
}
// the gradient of a GELU / SwiGLU input from g, the gradient of its output, and pre, its input
static RowSource rows_grad(int op, const bf16 *g, const bf16 *pre) {
    RowSource s; memset(&s, 0, sizeof(s));
    s.op = op; s.x = g; s.pre = pre;
    return s;
}
// a plain gradient g with its first pass, made by the kernel that wrote it (tiles a row, column
// partials of group rows)
static RowSource rows_grad_part(const bf16 *g, const float *part, int tiles, int group) {
    RowSource s = rows_plain(g);
    s.part = part; s.part_tiles = tiles; s.part_group = group;
    return s;
}

static void dge_apply(float *out, const float *g, const bf16 *W, const float *scales, int rows, int cols, Format f, float k,
                      cudaStream_t st) {
    if (cols % 8 != 0) die("dge_apply: %d columns, not a multiple of 8", cols);
    dge_apply_kernel<<<ceil_div((long long)rows * cols / 8, 256), 256, 0, st>>>(out, g, W, scales, rows, cols, f, k);
    CUDA_CHECK(cudaGetLastError());
}

#endif
