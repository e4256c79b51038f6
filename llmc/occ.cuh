// defines: OccPlan, occ_plan, Occ, occ_quantize_rows, occ_compensate, occ_compensate_grad
// OCC on the GPU (SPEC.md 4, RECIPE.md 5): each row of a 4-bit linear's input is clamped to its
// own quantiles [q(1 - alpha), q(alpha)], its scale taken from the clamped row, and the residual
// R = X - clamp(X) rounded to BF16 (about 2% of the entries at alpha 0.99) is added back with FP32
// accumulation: y += R W^T in the forward, dW += G^T R in the backward. Bounds, codes and
// residuals are the CPU occ_clamp_rows' bit for bit (test/test_quant_gpu).
//
// Selection without a sort, a warp per row. The k-th largest value of a row is at least the k-th
// largest of the maxima of any disjoint groups of its values (k groups hold a value that large).
// So group maxima give a threshold with at least k values above it: k <= 32, the smallest of the
// lanes' 32 maxima (about 120 values above it in 3072); 32 < k <= 256, the k-th largest of the
// 256 maxima of the lanes' value slots, found by a bisection (about 65 above it in 5632: the
// smallest of 64 maxima let about 290 through and 1.6% of rows past OCC_CAND, each of which then
// held its wave for a 32-pass bisection over the row). The values above the threshold go to
// shared memory, where a bisection on the bits of their order-preserving keys finds the exact
// k-th, and one counting pass its neighbour (the quantile interpolates the two). (More than
// OCC_CAND above it: both count over the whole row instead; slower, same answer.)
// Compensation: R made dense in BF16 (exact) for cuBLASLt BF16 GEMMs, y += R W^T and dW += G^T R,
// which at 2% of the entries beat our sparse kernels (W's rows read at random per outlier in the
// forward, G's rows gathered per outlier after a counting sort by column in the backward: 4.3 and
// 5.4 ms a step at GPT-2 124M, 8k tokens, against about 1.4 and 2 ms dense). The codes pass
// writes R as it clamps; the backward makes it again from the source and the row bounds kept per
// layer (bit for bit the same R, and no outlier lists to keep). G is BF16: a nonlinearity's gradient (dGELU,
// dSwiGLU) comes materialized by quantize_grad's codes pass.
// No float atomics: every sum runs in a fixed order, so runs repeat bit for bit.
#ifndef LLMC_OCC_CUH
#define LLMC_OCC_CUH

#include "quantize.cuh"
#include "matmul.cuh"

#define OCC_WARPS 4      // rows per block of the selection
#define OCC_CAND 512     // candidates per tail a warp keeps in shared memory

// where a row's quantiles sit, fixed by its width and alpha (quant.h's positions, as the CPU's)
typedef struct {
    int cols;
    int ilo, ihi;        // v[i] and v[i + 1] of the ascending row, interpolated by flo / fhi
    float flo, fhi;
    int jlo, jhi;        // groups per lane behind each threshold (1 or 8; 0: every value is a candidate)
} OccPlan;

static int occ_groups(int rank) { return rank <= 32 ? 1 : rank <= 256 ? 8 : 0; }

static OccPlan occ_plan(int cols, float alpha) {
    OccPlan p;
    p.cols = cols;
    quantile_index(cols, 1.0 - (double)alpha, &p.ilo, &p.flo);
    quantile_index(cols, (double)alpha, &p.ihi, &p.fhi);
    p.jlo = occ_groups(p.ilo + 2);     // ranks from the bottom: ilo + 1 and ilo + 2
    p.jhi = occ_groups(cols - p.ihi);  // from the top: cols - ihi and cols - ihi - 1
    return p;
}

// a linear input's OCC state
typedef struct {
    OccPlan plan;
    float2 *bounds;      // (rows) each row's [lo, hi], kept for the backward
    bf16 *dense;         // (rows, cols) R, scratch for the GEMMs
} Occ;

// float -> unsigned with the same order (-0 taken as +0); and back
__device__ inline unsigned ord_key(float x) {
    unsigned u = __float_as_uint(x + 0.0f);
    return u & 0x80000000u ? ~u : u | 0x80000000u;
}
__device__ inline float key_float(unsigned k) { return __uint_as_float(k & 0x80000000u ? k & 0x7fffffffu : ~k); }

// a key with at least rank of the row's keys at or above it, from gmax, each lane's maxima of its
// 8 value slots: J = 1, the smallest over the warp of the lanes' maxima; J = 8, the rank-th
// largest of all 256; J = 0, the smallest key
__device__ inline unsigned group_threshold(const unsigned *gmax, int J, int rank) {
    if (J == 0) return 0u;
    if (J == 1) {
        unsigned m = gmax[0];
        for (int k = 1; k < 8; k++) m = max(m, gmax[k]);
        return __reduce_min_sync(0xffffffffu, m);
    }
    unsigned res = 0u;
    for (int bit = 31; bit >= 0; bit--) {
        unsigned t = res | 1u << bit;
        int cnt = 0;
        for (int k = 0; k < 8; k++) cnt += gmax[k] >= t;
        if ((int)__reduce_add_sync(0xffffffffu, (unsigned)cnt) >= rank) res = t;
    }
    return res;
}

// the k-th largest key of row r (keys xor flip), from the n candidates above tau: tau itself when
// fewer than k are above it; over the whole row when too many were to be kept. Not inlined: its
// copies in occ_rows_kernel made it 47-69 KB of code, past the instruction cache.
template <int OP>
__device__ __noinline__ unsigned kth_largest(int k, const unsigned *cand, int n, unsigned tau, unsigned flip, const RowSource &in, int r, int cols,
                                float mu, float rs) {
    int lane = threadIdx.x % 32, whole = n > OCC_CAND;
    if (!whole && k > n) return tau;
    unsigned res = 0u;
    for (int bit = 31; bit >= 0; bit--) {
        unsigned t = res | 1u << bit;
        int cnt = 0;
        if (whole) {
            float v[8];
            for (int c = lane * 8; c < cols; c += 256) {
                src_values8<OP>(v, in, r, c, cols, mu, rs);
                for (int j = 0; j < 8; j++) cnt += (ord_key(v[j]) ^ flip) >= t;
            }
        } else {
            for (int i = lane; i < n; i += 32) cnt += cand[i] >= t;
        }
        if ((int)__reduce_add_sync(0xffffffffu, (unsigned)cnt) >= k) res = t;
    }
    return res;
}

// the (k - 1)-th largest key (up) or the (k + 1)-th (!up) of row r, a the k-th, from the same
// candidates (keys xor flip above tau; the whole row when they overflowed): one counting pass in
// place of a second bisection. Above a sit at most k - 1 keys: with exactly k - 1 the next larger
// is their smallest, else a repeats. At or above a sit at least k: with more, a repeats, else the
// next smaller is the largest key below a, or tau when no candidate is (tau's groups were sized
// for rank k + 1, so that rank is at least tau).
__device__ inline void next_see(unsigned x, unsigned a, int up, int *cnt, int *found, unsigned *best) {
    if (up) { if (x > a) { (*cnt)++; *best = min(*best, x); } }
    else if (x >= a) (*cnt)++;
    else { *found = 1; *best = max(*best, x); }
}
template <int OP>
__device__ __noinline__ unsigned kth_next(int k, unsigned a, int up, const unsigned *cand, int n, unsigned tau, unsigned flip,
                                          const RowSource &in, int r, int cols, float mu, float rs) {
    int lane = threadIdx.x % 32, whole = n > OCC_CAND;
    if (!up && !whole && a == tau) return a;  // keys equal to tau are no candidates: the rank k + 1 is tau
    int cnt = 0, found = 0;
    unsigned best = up ? ~0u : 0u;
    if (whole) {
        float v[8];
        for (int c = lane * 8; c < cols; c += 256) {
            src_values8<OP>(v, in, r, c, cols, mu, rs);
            for (int j = 0; j < 8; j++) next_see(ord_key(v[j]) ^ flip, a, up, &cnt, &found, &best);
        }
    } else {
        for (int i = lane; i < n; i += 32) next_see(cand[i], a, up, &cnt, &found, &best);
    }
    cnt = (int)__reduce_add_sync(0xffffffffu, (unsigned)cnt);
    if (up) return cnt == k - 1 ? __reduce_min_sync(0xffffffffu, best) : a;
    if (cnt > k) return a;
    found = __any_sync(0xffffffffu, found);
    best = __reduce_max_sync(0xffffffffu, best);
    return found ? best : tau;
}

// OCC's selection, a warp per row: the quantiles lo, hi and the scale of the clamped row
template <int OP>
__global__ void __launch_bounds__(OCC_WARPS * 32) occ_rows_kernel(float *scales, Occ o, RowSource in, int rows, Format f) {
    __shared__ unsigned cand[OCC_WARPS][2][OCC_CAND];
    const OccPlan &p = o.plan;
    int cols = p.cols, w = threadIdx.x / 32, lane = threadIdx.x % 32, r = blockIdx.x * OCC_WARPS + w;
    if (r >= rows) return;
    float mu = 0.0f, rs = 1.0f, v[8] = { 0.0f };
    if (OP == ROWS_NORM) norm_stats(in, r, cols, &mu, &rs);
    unsigned gtop[8], gbot[8];  // per value slot: the largest key, the largest flipped key (the smallest value)
    for (int j = 0; j < 8; j++) gtop[j] = gbot[j] = 0u;
    for (int c = lane * 8; c < cols; c += 256) {
        src_values8<OP>(v, in, r, c, cols, mu, rs);
        for (int j = 0; j < 8; j++) { unsigned key = ord_key(v[j]); gtop[j] = max(gtop[j], key); gbot[j] = max(gbot[j], ~key); }
    }
    int ktop = cols - p.ihi, kbot = p.ilo + 1, top = p.ihi == cols - 1;
    unsigned ttop = group_threshold(gtop, p.jhi, ktop), tbot = group_threshold(gbot, p.jlo, kbot + 1), kmax = 0u, kmin = 0u;
    for (int j = 0; j < 8; j++) { kmax = max(kmax, gtop[j]); kmin = max(kmin, gbot[j]); }
    float xmax = key_float(__reduce_max_sync(0xffffffffu, kmax)), xmin = key_float(~__reduce_max_sync(0xffffffffu, kmin));
    // the candidates above each threshold, a lane's after the lanes' below it (every lane runs
    // every iteration: the scan needs them all). A lane's counts of a chunk (at most 8 each) are
    // scanned over the warp together, top's in the low half of one word, bottom's in the high.
    unsigned *ctop = cand[w][0], *cbot = cand[w][1];
    int ntop = 0, nbot = 0;
    for (int c0 = 0; c0 < cols; c0 += 256) {
        int c = c0 + lane * 8, live = c < cols, mine = 0;
        unsigned key[8];
        if (live) src_values8<OP>(v, in, r, c, cols, mu, rs);
        for (int j = 0; j < 8; j++) {
            key[j] = ord_key(v[j]);
            mine += live ? (key[j] > ttop) + ((~key[j] > tbot) << 16) : 0;
        }
        int upto = mine;  // inclusive scan
        for (int o = 1; o < 32; o <<= 1) {
            int got = __shfl_up_sync(0xffffffffu, upto, o);
            if (lane >= o) upto += got;
        }
        int total = __shfl_sync(0xffffffffu, upto, 31), before = upto - mine;
        int it = ntop + (before & 0xffff), ib = nbot + (before >> 16);
        for (int j = 0; j < 8; j++) {
            if (!live) break;
            if (key[j] > ttop) { if (it < OCC_CAND) ctop[it] = key[j]; it++; }
            if (~key[j] > tbot) { if (ib < OCC_CAND) cbot[ib] = ~key[j]; ib++; }
        }
        ntop += total & 0xffff;
        nbot += total >> 16;
    }
    __syncwarp();
    // v[ihi], v[ihi + 1] are the (cols - ihi)-th and the next largest; v[ilo], v[ilo + 1] the
    // (ilo + 1)-th and the next smallest (the largest flipped keys)
    unsigned h0 = kth_largest<OP>(ktop, ctop, ntop, ttop, 0u, in, r, cols, mu, rs);
    unsigned h1 = top ? h0 : kth_next<OP>(ktop, h0, 1, ctop, ntop, ttop, 0u, in, r, cols, mu, rs);
    unsigned l0 = kth_largest<OP>(kbot, cbot, nbot, tbot, ~0u, in, r, cols, mu, rs);
    unsigned l1 = kth_next<OP>(kbot, l0, 0, cbot, nbot, tbot, ~0u, in, r, cols, mu, rs);
    float lo = quantile_lerp(key_float(~l0), key_float(~l1), p.flo);
    float hi = top ? key_float(h0) : quantile_lerp(key_float(h0), key_float(h1), p.fhi);
    // the clamped row spans [clamp(min), clamp(max)]: its absmax, as the CPU's over every value
    float cmax = fminf(fmaxf(xmax, lo), hi), cmin = fminf(fmaxf(xmin, lo), hi);
    if (lane == 0) { scales[r] = fmaxf(fabsf(cmax), fabsf(cmin)) / format_max(f); o.bounds[r] = make_float2(lo, hi); }
}

// R (rows, cols) made again from the source and the rows' bounds, 8 entries a thread
template <int OP>
__global__ void occ_residual_kernel(bf16 *dense, RowSource in, const float2 *bounds, int rows, int cols) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= (size_t)rows * cols) return;
    int r = (int)(i / cols), c = (int)(i % cols);
    float mu = OP == ROWS_NORM && in.mean ? in.mean[r] : 0.0f, rs = OP == ROWS_NORM ? in.rstd[r] : 1.0f, v[8];
    src_values8<OP>(v, in, r, c, cols, mu, rs);
    float2 b = bounds[r];
    occ_clamp<8>(v, b.x, b.y, dense + i);
}

// quantize_rows with OCC: the source's rows clamped to their quantiles, quantized per row from
// the clamped absmax; their bounds and R into o
static void occ_quantize_rows(fp8 *codes, fp8 *codes_t, float *scales, const RowSource *src, int rows, Format f, const Occ *o,
                              cudaStream_t st) {
    int cols = o->plan.cols;
    check_quantize("occ_quantize_rows", f, rows, cols, codes_t != NULL);
    if (src->op > ROWS_SWIGLU) die("occ_quantize_rows: source %d is a gradient's", src->op);
    void (*const kernel[])(float *, Occ, RowSource, int, Format) = {
        occ_rows_kernel<ROWS_PLAIN>, occ_rows_kernel<ROWS_NORM>, occ_rows_kernel<ROWS_GELU>, occ_rows_kernel<ROWS_SWIGLU> };
    kernel[src->op]<<<ceil_div(rows, OCC_WARPS), OCC_WARPS * 32, 0, st>>>(scales, *o, *src, rows, f);
    CUDA_CHECK(cudaGetLastError());
    rows_codes(codes, codes_t, scales, src, o->bounds, o->dense, rows, cols, f, st);
}

// y (rows, M) += R W^T: the forward's compensation, W (M, K) the BF16 weights, R as
// occ_quantize_rows left it
static void occ_compensate(bf16 *y, const Occ *o, const bf16 *W, int rows, int M, int K, cudaStream_t st) {
    if (K != o->plan.cols) die("occ_compensate: %d inputs, the plan's %d", K, o->plan.cols);
    matmul_forward(y, o->dense, W, NULL, y, NULL, rows, K, M, st);
}

// dW (M, K) += G^T R: the compensation's weight gradient, exact (no DGE: R multiplies W itself),
// G (rows, M) BF16 (a nonlinearity's gradient as quantize_grad's codes pass wrote it:
// RowSource.out), R made again from the forward's source src and o's bounds
static void occ_compensate_grad(float *dW, const Occ *o, const RowSource *src, const bf16 *g, int rows, int M, int K, cudaStream_t st) {
    if (K != o->plan.cols) die("occ_compensate_grad: %d inputs, the plan's %d", K, o->plan.cols);
    if (src->op > ROWS_SWIGLU) die("occ_compensate_grad: source %d is a gradient's", src->op);
    void (*const kernel[])(bf16 *, RowSource, const float2 *, int, int) = {
        occ_residual_kernel<ROWS_PLAIN>, occ_residual_kernel<ROWS_NORM>, occ_residual_kernel<ROWS_GELU>,
        occ_residual_kernel<ROWS_SWIGLU> };
    kernel[src->op]<<<ceil_div((size_t)rows * K / 8, 256), 256, 0, st>>>(o->dense, *src, o->bounds, rows, K);
    CUDA_CHECK(cudaGetLastError());
    matmul_wgrad(dW, g, o->dense, rows, M, K, 1.0f, st);
}

#endif
