// defines: OccPlan, occ_plan, Occ, occ_quantize_rows, occ_compensate, occ_compensate_grad
// OCC on the GPU (SPEC.md 4, RECIPE.md 5): each row of a 4-bit linear's input is clamped to its
// own quantiles [q(1 - alpha), q(alpha)], its scale taken from the clamped row, and the residual
// R = X - clamp(X) rounded to BF16 (about 2% of the entries at alpha 0.99) is added back with FP32
// accumulation: y += R W^T in the forward, dW += G^T R in the backward. Bounds, codes and
// residuals are the CPU occ_clamp_rows' bit for bit (test/test_quant_gpu).
//
// Selection without a sort, a warp per row, the row's values made once (a fused norm or
// nonlinearity is most of the work) and kept as order-preserving keys in shared memory. The k-th
// largest value of a row is at least the k-th largest of the maxima of any disjoint groups of its
// values (k groups hold a value that large). So group maxima give a threshold with at least k
// values above it: k <= 32, the smallest of the lanes' 32 maxima (about 120 values above it in
// 3072); 32 < k <= 256, the k-th largest of the 256 maxima of the lanes' value slots (about 65
// above it in 5632, where the smallest of 64 maxima let about 290 through). The values above the
// threshold are gathered, and a bisection on the bits of their keys finds the exact k-th (over
// the bits where the keys differ only: BF16 sources leave 16 low bits zero), and one counting
// pass its neighbour (the quantile interpolates the two). (More than OCC_CAND above it: both
// count over the whole row instead; slower, same answer.)
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

#define OCC_WARPS 4      // rows per block of the selection, at most
#define OCC_CAND 256     // candidates per tail a warp keeps (iid rows: past 256 in 0.2-0.7% of them;
                         // at least 256, the list of group_threshold's J = 8)

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

// A warp's list of keys: its candidates cand[0..n) or, when they overflowed (n > OCC_CAND), the
// whole row, each lane its own chunks' keys (xor flip). The row's keys of 256-column chunk c0 sit
// in keys[c0..c0 + 256): a lane's first 4 at lane * 4, its next 4 at 128 + lane * 4 (whole
// 128-byte lines per quarter warp, no bank conflicts).
__device__ inline void row_keys(unsigned *k, const unsigned *keys, int c0, int lane) {
    uint4 a = *(const uint4 *)(keys + c0 + lane * 4), b = *(const uint4 *)(keys + c0 + 128 + lane * 4);
    k[0] = a.x; k[1] = a.y; k[2] = a.z; k[3] = a.w; k[4] = b.x; k[5] = b.y; k[6] = b.z; k[7] = b.w;
}

// where row_keys finds value j (0..7) of the lane's 8 at column c0 + lane * 8
__device__ inline int row_slot(int c0, int lane, int j) { return c0 + lane * 4 + j + (j >= 4) * 124; }

// how many of the lane's share of the list are at or above t: its candidates, held in c (t > 0:
// the 0s padding c count none), or its chunks of the whole row
__device__ inline int count_ge(unsigned t, const unsigned *c, int n, const unsigned *keys, int cols, unsigned flip) {
    int lane = threadIdx.x % 32, cnt = 0;
    if (n <= OCC_CAND) {
        for (int j = 0; j < OCC_CAND / 32; j++) cnt += c[j] >= t;
    } else {
        unsigned k[8];
        for (int c0 = 0; c0 + lane * 8 < cols; c0 += 256) {
            row_keys(k, keys, c0, lane);
            for (int j = 0; j < 8; j++) cnt += (k[j] ^ flip) >= t;
        }
    }
    return cnt;
}

// the k-th largest of the list (k <= its length), by bisection on the key bits below the common
// prefix of its smallest and largest key and above the bits zero in every key, the candidates
// held in registers. Not inlined: its copies in the four kernels would outgrow the instruction
// cache.
__device__ __noinline__ unsigned kth_largest(int k, const unsigned *cand, int n, const unsigned *keys, int cols, unsigned flip) {
    int lane = threadIdx.x % 32;
    unsigned c[OCC_CAND / 32], lo = ~0u, hi = 0u, any = 0u;
    for (int j = 0; j < OCC_CAND / 32; j++) {
        int in = n <= OCC_CAND && lane + 32 * j < n;
        c[j] = in ? cand[lane + 32 * j] : 0u;
        if (in) { lo = min(lo, c[j]); hi = max(hi, c[j]); any |= c[j]; }
    }
    if (n > OCC_CAND) {
        unsigned kk[8];
        for (int c0 = 0; c0 + lane * 8 < cols; c0 += 256) {
            row_keys(kk, keys, c0, lane);
            for (int j = 0; j < 8; j++) { unsigned x = kk[j] ^ flip; lo = min(lo, x); hi = max(hi, x); any |= x; }
        }
    }
    lo = __reduce_min_sync(0xffffffffu, lo);
    hi = __reduce_max_sync(0xffffffffu, hi);
    any = __reduce_or_sync(0xffffffffu, any);
    int nb = 32 - __clz(lo ^ hi), low = max(__ffs(any) - 1, 0);  // the answer has hi's bits above nb, none below low
    unsigned res = nb == 32 ? 0u : hi >> nb << nb;
    for (int bit = nb - 1; bit >= low; bit--) {
        unsigned t = res | 1u << bit;
        if ((int)__reduce_add_sync(0xffffffffu, (unsigned)count_ge(t, c, n, keys, cols, flip)) >= k) res = t;
    }
    return res;
}

// a key with at least rank of the row's keys at or above it, from gmax, each lane's maxima of its
// 8 value slots: J = 1, the smallest over the warp of the lanes' maxima; J = 8, the rank-th
// largest of all 256 (through list, scratch for 256 keys); J = 0, the smallest key
__device__ inline unsigned group_threshold(const unsigned *gmax, int J, int rank, unsigned *list) {
    if (J == 0) return 0u;
    unsigned m = gmax[0];
    for (int k = 1; k < 8; k++) m = max(m, gmax[k]);
    if (J == 1) return __reduce_min_sync(0xffffffffu, m);
    int lane = threadIdx.x % 32;
    for (int k = 0; k < 8; k++) list[lane * 8 + k] = gmax[k];
    __syncwarp();
    unsigned t = kth_largest(rank, list, 256, NULL, 0, 0u);
    __syncwarp();  // the list's space takes the candidates next
    return t;
}

// the k-th largest key of the row's (keys xor flip) from its n candidates above tau: tau itself
// when fewer than k are above it
__device__ inline unsigned kth_key(int k, const unsigned *cand, int n, unsigned tau, const unsigned *keys, int cols, unsigned flip) {
    return n <= OCC_CAND && k > n ? tau : kth_largest(k, cand, n, keys, cols, flip);
}

// the (k - 1)-th largest key (up) or the (k + 1)-th (!up) of the row, a the k-th, from the same
// list: one counting pass in place of a second bisection. Above a sit at most k - 1 keys: with
// exactly k - 1 the next larger is their smallest, else a repeats. At or above a sit at least k:
// with more, a repeats, else the next smaller is the largest key below a, or tau when no
// candidate is (tau's groups were sized for rank k + 1, so that rank is at least tau).
__device__ inline void next_see(unsigned x, unsigned a, int up, int *cnt, int *found, unsigned *best) {
    if (up) { if (x > a) { (*cnt)++; *best = min(*best, x); } }
    else if (x >= a) (*cnt)++;
    else { *found = 1; *best = max(*best, x); }
}
__device__ __noinline__ unsigned kth_next(int k, unsigned a, int up, const unsigned *cand, int n, unsigned tau, const unsigned *keys,
                                          int cols, unsigned flip) {
    int lane = threadIdx.x % 32, whole = n > OCC_CAND;
    if (!up && !whole && a == tau) return a;  // keys equal to tau are no candidates: the rank k + 1 is tau
    int cnt = 0, found = 0;
    unsigned best = up ? ~0u : 0u;
    if (whole) {
        unsigned kk[8];
        for (int c0 = 0; c0 + lane * 8 < cols; c0 += 256) {
            row_keys(kk, keys, c0, lane);
            for (int j = 0; j < 8; j++) next_see(kk[j] ^ flip, a, up, &cnt, &found, &best);
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

// a warp's shared memory in the selection: the row's keys (cols rounded up to 256), then
// OCC_CAND candidates for each tail
__host__ __device__ inline int occ_keys_len(int cols) { return (cols + 255) / 256 * 256; }
__host__ __device__ inline int occ_span(int cols) { return occ_keys_len(cols) + 2 * OCC_CAND; }

// OCC's selection, a warp per row: the quantiles lo, hi and the scale of the clamped row
template <int OP>
__global__ void __launch_bounds__(OCC_WARPS * 32) occ_rows_kernel(float *scales, Occ o, RowSource in, int rows, Format f) {
    extern __shared__ unsigned occ_smem[];
    const OccPlan &p = o.plan;
    int cols = p.cols, w = threadIdx.x / 32, lane = threadIdx.x % 32, r = blockIdx.x * (blockDim.x / 32) + w;
    if (r >= rows) return;
    unsigned *keys = occ_smem + (size_t)w * occ_span(cols), *ctop = keys + occ_keys_len(cols), *cbot = ctop + OCC_CAND;
    float mu = 0.0f, rs = 1.0f, v[8];
    if (OP == ROWS_NORM) norm_stats(in, r, cols, &mu, &rs);
    unsigned gtop[8], gbot[8], key[8];  // per value slot: the largest key, the largest flipped key (the smallest value)
    for (int j = 0; j < 8; j++) gtop[j] = gbot[j] = 0u;
    // U chunks' loads issued before any is computed: a lane's loads wait on nothing else, and
    // the nonlinearities' wide rows leave shared memory few warps an SM to hide them
    const int U = OP >= ROWS_GELU ? 4 : 2;
    for (int c1 = 0; c1 < cols; c1 += U * 256) {
        Pack<8> raw[U][src_loads<OP>()];
        for (int u = 0; u < U; u++)
            if (c1 + u * 256 + lane * 8 < cols) src_fetch<OP, 8>(raw[u], in, r, c1 + u * 256 + lane * 8, cols);
        for (int u = 0; u < U; u++) {
            int c0 = c1 + u * 256, c = c0 + lane * 8;
            if (c >= cols) break;
            float w[8], b[8];
            if (OP == ROWS_NORM) norm_params<8>(w, b, in, c);
            src_values<OP, 8>(v, raw[u], c, cols, w, b, mu, rs);
            for (int j = 0; j < 8; j++) { key[j] = ord_key(v[j]); gtop[j] = max(gtop[j], key[j]); gbot[j] = max(gbot[j], ~key[j]); }
            *(uint4 *)(keys + c0 + lane * 4) = make_uint4(key[0], key[1], key[2], key[3]);
            *(uint4 *)(keys + c0 + 128 + lane * 4) = make_uint4(key[4], key[5], key[6], key[7]);
        }
    }
    int ktop = cols - p.ihi, kbot = p.ilo + 1, top = p.ihi == cols - 1;
    unsigned ttop = group_threshold(gtop, p.jhi, ktop, ctop), tbot = group_threshold(gbot, p.jlo, kbot + 1, cbot), kmax = 0u, kmin = 0u;
    for (int j = 0; j < 8; j++) { kmax = max(kmax, gtop[j]); kmin = max(kmin, gbot[j]); }
    float xmax = key_float(__reduce_max_sync(0xffffffffu, kmax)), xmin = key_float(~__reduce_max_sync(0xffffffffu, kmin));
    // the candidates above each threshold, a lane's after the lanes' below it (every lane runs
    // every iteration: the scan needs them all). A lane's counts of a chunk (at most 8 each) are
    // scanned over the warp together, top's in the low half of one word, bottom's in the high;
    // then each lane copies its few candidates from the keys, by the bits of its masks.
    int ntop = 0, nbot = 0;
    for (int c0 = 0; c0 < cols; c0 += 256) {
        unsigned mtop = 0u, mbot = 0u;
        if (c0 + lane * 8 < cols) {
            row_keys(key, keys, c0, lane);
            for (int j = 0; j < 8; j++) { mtop |= (unsigned)(key[j] > ttop) << j; mbot |= (unsigned)(~key[j] > tbot) << j; }
        }
        int mine = __popc(mtop) | __popc(mbot) << 16;
        if (!__any_sync(0xffffffffu, mine)) continue;
        int upto = mine;  // inclusive scan
        for (int o = 1; o < 32; o <<= 1) {
            int got = __shfl_up_sync(0xffffffffu, upto, o);
            if (lane >= o) upto += got;
        }
        int total = __shfl_sync(0xffffffffu, upto, 31), before = upto - mine;
        int it = ntop + (before & 0xffff), ib = nbot + (before >> 16);
        for (; mtop; mtop &= mtop - 1, it++)
            if (it < OCC_CAND) ctop[it] = keys[row_slot(c0, lane, __ffs(mtop) - 1)];
        for (; mbot; mbot &= mbot - 1, ib++)
            if (ib < OCC_CAND) cbot[ib] = ~keys[row_slot(c0, lane, __ffs(mbot) - 1)];
        ntop += total & 0xffff;
        nbot += total >> 16;
    }
    __syncwarp();
    // v[ihi], v[ihi + 1] are the (cols - ihi)-th and the next largest; v[ilo], v[ilo + 1] the
    // (ilo + 1)-th and the next smallest (the largest flipped keys)
    unsigned h0 = kth_key(ktop, ctop, ntop, ttop, keys, cols, 0u);
    unsigned h1 = top ? h0 : kth_next(ktop, h0, 1, ctop, ntop, ttop, keys, cols, 0u);
    unsigned l0 = kth_key(kbot, cbot, nbot, tbot, keys, cols, ~0u);
    unsigned l1 = kth_next(kbot, l0, 0, cbot, nbot, tbot, keys, cols, ~0u);
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
    // the rows a block holds in shared memory (227 KB an SM on Hopper); each kernel allowed it all once
    const int most = 227 * 1024;
    static int allowed[4];
    size_t span = occ_span(cols) * sizeof(unsigned);
    int warps = (int)min((size_t)OCC_WARPS, most / span);
    if (warps == 0) die("occ_quantize_rows: %d columns do not fit the selection's shared memory", cols);
    if (!allowed[src->op]) {
        CUDA_CHECK(cudaFuncSetAttribute(kernel[src->op], cudaFuncAttributeMaxDynamicSharedMemorySize, most));
        allowed[src->op] = 1;
    }
    kernel[src->op]<<<ceil_div(rows, warps), warps * 32, warps * span, st>>>(scales, *o, *src, rows, f);
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
