// defines: OccPlan, occ_plan, Occ, occ_quantize_rows, occ_compensate, occ_compensate_grad
// OCC on the GPU (SPEC.md 4, RECIPE.md 5): each row of a 4-bit linear's input is clamped to its
// own quantiles [q(1 - alpha), q(alpha)], its scale taken from the clamped row, and the residual
// R = X - clamp(X) rounded to BF16 (about 2% of the entries at alpha 0.99) is added back with FP32
// accumulation: y += R W^T in the forward, dW += G^T R in the backward. Bounds, codes and
// residuals are the CPU occ_clamp_rows' bit for bit (test/test_quant_gpu).
//
// Selection without a sort, a warp per row, the row's values made once (a fused norm or
// nonlinearity is most of the work) as order-preserving keys kept in shared memory (rows past 4096
// columns keep only the keys' upper halves: twice the warps an SM). The k-th largest value of a
// row is at least the k-th largest of the maxima of any disjoint groups of its values (k groups
// hold a value that large). So group maxima give a threshold with at least k values above it:
// for k <= 256, the k-th largest of the 256 maxima of the lanes' value slots, or a little below it
// (about 7 values above the exact one in 768, 32 in 3072, 63 in 5632; iid rows, simulated). The
// values above the threshold are gathered (halves: those whose upper half clears the threshold's,
// then made exactly again from the source, all at once); up to 64 of them are ranked against each
// other, which gives the exact k-th and its neighbour (the quantile interpolates the two) in one
// pass; longer lists take a bisection on the bits of their keys (over the bits where
// they differ only: BF16 sources leave 16 low bits zero) and a counting pass. (More than OCC_CAND
// above it: both count over the whole row's keys, or halves the row made again per pass; slower,
// same answer.)
// Compensation (--occ-comp 1, the default): R made dense in BF16 (exact) for cuBLASLt BF16
// GEMMs, y += R W^T and dW += G^T R, which at 2% of the entries beat our sparse kernels (W's rows
// read at random per outlier in the forward, G's rows gathered per outlier after a counting sort
// by column in the backward: 4.3 and 5.4 ms a step at GPT-2 124M, 8k tokens, against about 1.4
// and 2 ms dense). The codes pass writes R as it clamps; the backward makes it again from the
// source and the row bounds kept per layer (bit for bit the same R, and no outlier lists to
// keep). G is BF16: a nonlinearity's gradient (dGELU, dSwiGLU) comes materialized by
// quantize_grad's codes pass. In the operand (--occ-comp 2): the codes pass folds each clamped
// entry's excess into its E4M3 code (quant.h's occ_fold), and the FP8 GEMMs carry it, forward and
// wgrad: no R, no extra GEMM, DGE on the whole weight gradient.
// No float atomics: every sum runs in a fixed order, so runs repeat bit for bit.
#ifndef LLMC_OCC_CUH
#define LLMC_OCC_CUH

#include "quantize.cuh"
#include "matmul.cuh"

#define OCC_WARPS 4      // rows per block of the selection, at most
#define OCC_CAND 256     // candidates per tail a warp keeps (at least 256: the slot maxima's list)

// where a row's quantiles sit, fixed by its width and alpha (quant.h's positions, as the CPU's)
typedef struct {
    int cols;
    int ilo, ihi;        // v[i] and v[i + 1] of the ascending row, interpolated by flo / fhi
    float flo, fhi;
    int glo, ghi;        // each tail's threshold from the slot maxima (ranks up to 256), else none:
                         // every value is a candidate
} OccPlan;

static OccPlan occ_plan(int cols, float alpha) {
    OccPlan p;
    p.cols = cols;
    quantile_index(cols, 1.0 - (double)alpha, &p.ilo, &p.flo);
    quantile_index(cols, (double)alpha, &p.ihi, &p.fhi);
    p.glo = p.ilo + 2 <= 256;        // ranks from the bottom: ilo + 1 and ilo + 2
    p.ghi = cols - p.ihi <= 256;     // from the top: cols - ihi and cols - ihi - 1
    return p;
}

// a linear input's OCC state
typedef struct {
    OccPlan plan;
    float2 *bounds;      // (rows) each row's [lo, hi], kept for the backward
    bf16 *dense;         // (rows, cols) R, scratch for the BF16 compensation's GEMMs (NULL: none)
    int fold;            // R folded into the codes (the compensation in the operand)
} Occ;

// float -> unsigned with the same order (-0 taken as +0); and back
__device__ inline unsigned ord_key(float x) {
    unsigned u = __float_as_uint(x + 0.0f);
    return u & 0x80000000u ? ~u : u | 0x80000000u;
}
__device__ inline float key_float(unsigned k) { return __uint_as_float(k & 0x80000000u ? k & 0x7fffffffu : ~k); }

// how many of the warp's candidates, c in registers (OCC_CAND / 32 a lane, 0s padding), are at or
// above t (t > 0: the padding counts none)
__device__ inline int count_ge(unsigned t, const unsigned *c) {
    int cnt = 0;
    for (int j = 0; j < OCC_CAND / 32; j++) cnt += c[j] >= t;
    return cnt;
}

// the k-th largest of the list cand[0..n) (k <= n <= OCC_CAND), by bisection on the key bits below
// the common prefix of its smallest and largest key and above the bits zero in every key, the
// candidates held in registers. With enough > 0 the bisection stops once at most enough keys are
// at or above its lower end: a key at most the k-th largest. Not inlined: its copies in the four
// kernels would outgrow the instruction cache.
__device__ __noinline__ unsigned kth_largest(int k, const unsigned *cand, int n, int enough) {
    int lane = threadIdx.x % 32;
    unsigned c[OCC_CAND / 32], lo = ~0u, hi = 0u, any = 0u;
    for (int j = 0; j < OCC_CAND / 32; j++) {
        int in = lane + 32 * j < n;
        c[j] = in ? cand[lane + 32 * j] : 0u;
        if (in) { lo = min(lo, c[j]); hi = max(hi, c[j]); any |= c[j]; }
    }
    lo = __reduce_min_sync(0xffffffffu, lo);
    hi = __reduce_max_sync(0xffffffffu, hi);
    any = __reduce_or_sync(0xffffffffu, any);
    int nb = 32 - __clz(lo ^ hi), low = max(__ffs(any) - 1, 0);  // the answer has hi's bits above nb, none below low
    unsigned res = nb == 32 ? 0u : hi >> nb << nb;
    for (int bit = nb - 1, at = n; bit >= low && at > enough; bit--) {  // at: the keys at or above res
        unsigned t = res | 1u << bit;
        int cnt = (int)__reduce_add_sync(0xffffffffu, (unsigned)count_ge(t, c));
        if (cnt >= k) { res = t; at = cnt; }
    }
    return res;
}

// The threshold is a filter only: a key below the rank-th largest maximum lets a few more
// candidates through. So its bisection stops once at most 5/4 rank maxima are at or above it,
// ~10 steps in place of ~25. (H100, with the candidates ranked by counting: GPT-2 124M's
// 3072-column GELU rows 4.92 ms a step with the whole bisection, 4.06 with it cut to the float's
// top 5 mantissa bits. A cut relative to the value fails where values crowd: with 3 mantissa bits
// hundreds of GELU's smallest values, at its minimum -0.17, got through, and the rows' own
// bisection took 15.8 ms; one of 8 steps below the maxima's common prefix fails where they have
// both signs: 8.16 ms.) The lanes' 32 maxima, whose smallest is a threshold in 5 shuffles, let
// ~117 candidates through in 768 columns: 1.98 ms for GPT-2's norm rows, 1.29 with the slot maxima.

// a key with at least rank of the row's keys at or above it, from gmax, each lane's maxima of its
// 8 value slots: the rank-th largest of all 256, or a little below (through list, scratch for
// 256 keys); without grouped, the smallest key
__device__ inline unsigned group_threshold(const unsigned *gmax, int grouped, int rank, unsigned *list) {
    if (!grouped) return 0u;
    int lane = threadIdx.x % 32;
    for (int k = 0; k < 8; k++) list[lane * 8 + k] = gmax[k];
    __syncwarp();
    unsigned t = kth_largest(rank, list, 256, rank + rank / 4);
    __syncwarp();  // the list's space takes the candidates next
    return t;
}

// the (k - 1)-th largest key (up) or the (k + 1)-th (!up) of a row with the k-th a, from its
// candidates above tau (n <= OCC_CAND): one counting pass in place of a second bisection. Above a
// sit at most k - 1 keys: with exactly k - 1 the next larger is their smallest, else a repeats. At
// or above a sit at least k: with more, a repeats, else the next smaller is the largest key below
// a, or tau when no candidate is (tau's groups were sized for rank k + 1, so that rank is at least
// tau). next_see takes one key, next_finish the warp's verdict (row_kth's whole row too).
__device__ inline void next_see(unsigned x, unsigned a, int up, int *cnt, int *found, unsigned *best) {
    if (up) { if (x > a) { (*cnt)++; *best = min(*best, x); } }
    else if (x >= a) (*cnt)++;
    else { *found = 1; *best = max(*best, x); }
}
__device__ inline unsigned next_finish(int k, unsigned a, int up, int cnt, int found, unsigned best, unsigned tau) {
    cnt = (int)__reduce_add_sync(0xffffffffu, (unsigned)cnt);
    if (up) return cnt == k - 1 ? __reduce_min_sync(0xffffffffu, best) : a;
    if (cnt > k) return a;
    found = __any_sync(0xffffffffu, found);
    best = __reduce_max_sync(0xffffffffu, best);
    return found ? best : tau;
}

// The keys of ranks k and k - 1 (up) or k + 1 (!up) of a row from its n <= OCC_CAND candidates,
// the keys above tau (a rank past n: tau, which the groups were sized for). Up to 64 candidates
// (the slot maxima's lists), each lane's are ranked against all n: the key of rank j has fewer
// than j above it and at least j at or above it; one pass over the list, where a bisection waits
// on ~24 warp reductions in turn. Longer lists: the bisection, then one counting pass for the
// neighbour. kth_pair is not inlined, as kth_largest.
template <int M>
__device__ inline uint2 rank_pair(int k, int j, const unsigned *cand, int n, unsigned tau) {
    int lane = threadIdx.x % 32, gt[M], ge[M];
    unsigned c[M], r0 = 0u, r1 = 0u;  // keys are above tau >= 0: 0 is no key
    for (int m = 0; m < M; m++) { c[m] = lane + 32 * m < n ? cand[lane + 32 * m] : 0u; gt[m] = ge[m] = 0; }
    for (int i = 0; i < n; i++) {
        unsigned x = cand[i];
        for (int m = 0; m < M; m++) { gt[m] += x > c[m]; ge[m] += x >= c[m]; }
    }
    for (int m = 0; m < M; m++)
        if (lane + 32 * m < n) {
            if (gt[m] < k && k <= ge[m]) r0 = c[m];
            if (gt[m] < j && j <= ge[m]) r1 = c[m];
        }
    r0 = __reduce_max_sync(0xffffffffu, r0);
    r1 = __reduce_max_sync(0xffffffffu, r1);
    return make_uint2(k <= n ? r0 : tau, j <= n ? r1 : tau);
}
__device__ __noinline__ uint2 kth_pair(int k, int up, const unsigned *cand, int n, unsigned tau) {
    if (n <= 32) return rank_pair<1>(k, up ? k - 1 : k + 1, cand, n, tau);
    if (n <= 64) return rank_pair<2>(k, up ? k - 1 : k + 1, cand, n, tau);
    unsigned a = k > n ? tau : kth_largest(k, cand, n, 0);
    if (!up && a == tau) return make_uint2(a, a);  // keys equal to tau are no candidates: the rank k + 1 is tau
    int cnt = 0, found = 0;
    unsigned best = up ? ~0u : 0u;
    for (int i = threadIdx.x % 32; i < n; i += 32) next_see(cand[i], a, up, &cnt, &found, &best);
    return make_uint2(a, next_finish(k, a, up, cnt, found, best, tau));
}

// the lane's 8 keys (xor flip) of row r at 256-column chunk c0, columns c0 + lane * 8 .. + 7:
// from the whole keys in shared memory, or (keys NULL) made from the source (none past the row:
// zeros, which count as no key at or above any t > 0)
template <int OP>
__device__ inline void chunk_keys(unsigned *key, const unsigned *keys, const RowSource &in, int r, int c0, int cols, float mu, float rs,
                                  unsigned flip) {
    int c = c0 + threadIdx.x % 32 * 8;
    float v[8];
    if (c < cols && keys) {
        uint4 a = *(const uint4 *)(keys + c), b = *(const uint4 *)(keys + c + 4);
        unsigned k[8] = { a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w };
        for (int j = 0; j < 8; j++) key[j] = k[j] ^ flip;
        return;
    }
    if (c < cols) src_values8<OP>(v, in, r, c, cols, mu, rs);
    for (int j = 0; j < 8; j++) key[j] = c < cols ? ord_key(v[j]) ^ flip : 0u;
}

// A row with more than OCC_CAND keys above a threshold: its k-th largest key (xor flip) and the
// next one (up or down) as kth_pair finds them, by a bisection with a pass over the row
// per step: over its whole keys in shared memory, or (keys NULL: halves) over the row made again
// from the source (slower, same answer). Rare (in simulated iid rows at most 75 keys clear the slot
// maxima's threshold), but ~32 passes each: with the lanes' maxima as the threshold, 0.5-0.7% of
// 3072-column rows overflowed, and remaking the row on every pass cost GPT-2 124M's GELU selection
// 2.2 ms a step (the row's block holds its shared memory meanwhile). The source comes as its
// pointers: a RowSource by reference would be copied to the stack every row.
template <int OP>
__device__ __noinline__ uint2 row_kth(int k, int up, unsigned flip, const unsigned *keys, const bf16 *x, const bf16 *w, const bf16 *b, int r,
                                      int cols, float mu, float rs) {
    RowSource in = {};
    in.op = OP; in.x = x; in.w = w; in.b = b;
    unsigned key[8], lo = ~0u, hi = 0u, any = 0u;
    for (int c0 = 0; c0 < cols; c0 += 256) {
        chunk_keys<OP>(key, keys, in, r, c0, cols, mu, rs, flip);
        for (int j = 0; j < 8; j++) if (c0 + threadIdx.x % 32 * 8 < cols) { lo = min(lo, key[j]); hi = max(hi, key[j]); any |= key[j]; }
    }
    lo = __reduce_min_sync(0xffffffffu, lo);
    hi = __reduce_max_sync(0xffffffffu, hi);
    any = __reduce_or_sync(0xffffffffu, any);
    int nb = 32 - __clz(lo ^ hi), low = max(__ffs(any) - 1, 0);
    unsigned res = nb == 32 ? 0u : hi >> nb << nb;
    for (int bit = nb - 1; bit >= low; bit--) {
        unsigned t = res | 1u << bit;
        int cnt = 0;
        for (int c0 = 0; c0 < cols; c0 += 256) {
            chunk_keys<OP>(key, keys, in, r, c0, cols, mu, rs, flip);
            for (int j = 0; j < 8; j++) cnt += key[j] >= t;
        }
        if ((int)__reduce_add_sync(0xffffffffu, (unsigned)cnt) >= k) res = t;
    }
    int cnt = 0, found = 0;
    unsigned best = up ? ~0u : 0u;
    for (int c0 = 0; c0 < cols; c0 += 256) {
        chunk_keys<OP>(key, keys, in, r, c0, cols, mu, rs, flip);
        for (int j = 0; j < 8; j++) if (c0 + threadIdx.x % 32 * 8 < cols) next_see(key[j], res, up, &cnt, &found, &best);
    }
    return make_uint2(res, next_finish(k, res, up, cnt, found, best, res));  // whole row: a key below res unless k is its length
}

// the exact key of row r's value at column c, made again from the source (two values from one
// 4-byte load, as src_values makes them)
template <int OP>
__device__ inline unsigned value_key(const RowSource &in, int r, int c, int cols, float mu, float rs) {
    int c2 = c & ~1;
    float v[2], w[2], b[2];
    Pack<2> raw[src_loads<OP>()];
    if (OP == ROWS_NORM) norm_params<2>(w, b, in, c2);
    src_fetch<OP, 2>(raw, in, r, c2, cols);
    src_values<OP, 2>(v, raw, c2, cols, w, b, mu, rs);
    return ord_key(c & 1 ? v[1] : v[0]);
}

// The halves' candidates, list[0..n) their columns: their exact keys (xor flip) made again from
// the source, every load in flight at once, and those above tau kept, in list order; their count.
// (More than OCC_CAND: the count stays, row_kth takes the row.)
template <int OP>
__device__ inline int exact_candidates(unsigned *list, int n, unsigned tau, unsigned flip, const RowSource &in, int r, int cols,
                                       float mu, float rs) {
    if (n > OCC_CAND) return n;
    int lane = threadIdx.x % 32, m = 0;
    unsigned k[OCC_CAND / 32], below = (1u << lane) - 1u;
    for (int j = 0; j < OCC_CAND / 32; j++) k[j] = lane + 32 * j < n ? value_key<OP>(in, r, list[lane + 32 * j], cols, mu, rs) ^ flip : 0u;
    __syncwarp();
    #pragma unroll
    for (int j = 0; j < OCC_CAND / 32 && 32 * j < n; j++) {
        unsigned b = __ballot_sync(0xffffffffu, k[j] > tau);
        if (k[j] > tau) list[m + __popc(b & below)] = k[j];
        m += __popc(b);
    }
    __syncwarp();
    return m;
}

// A warp's shared memory in the selection: the row's keys (cols rounded up to 256), then OCC_CAND
// candidates for each tail; in 4-byte words. Rows wider than OCC_WHOLE_KEYS keep only their keys'
// upper halves (twice the warps an SM), the candidates' exact keys made again from the source;
// narrower rows keep whole keys, which overflowing rows bisect over without making the row again.
// H100: LLaMA 928M's 5632-column SwiGLU rows 4.9 ms a step whole (8 warps an SM), 3.5 halved
// (2.5 with the candidates made again all at once); GPT-2 124M's 3072-column GELU rows 4.06
// whole, 4.18 halved; LLaMA's 2048-column norm rows 0.905 whole, 0.888 halved.
#define OCC_WHOLE_KEYS 4096
__host__ __device__ inline int occ_halves(int cols) { return cols > OCC_WHOLE_KEYS; }
__host__ __device__ inline int occ_keys_words(int cols) {
    int n = (cols + 255) / 256 * 256;
    return occ_halves(cols) ? n / 2 : n;
}
__host__ __device__ inline int occ_span(int cols) { return occ_keys_words(cols) + 2 * OCC_CAND; }

// OCC's selection, a warp per row: the quantiles lo, hi and the scale of the clamped row
template <int OP>
__global__ void __launch_bounds__(OCC_WARPS * 32) occ_rows_kernel(float *scales, Occ o, RowSource in, int rows, Format f) {
    extern __shared__ unsigned occ_smem[];
    const OccPlan &p = o.plan;
    int cols = p.cols, w = threadIdx.x / 32, lane = threadIdx.x % 32, r = blockIdx.x * (blockDim.x / 32) + w;
    if (r >= rows) return;
    unsigned *keys = occ_smem + (size_t)w * occ_span(cols), *ctop = keys + occ_keys_words(cols), *cbot = ctop + OCC_CAND;
    unsigned short *keys16 = (unsigned short *)keys;  // the upper halves, when halves
    const int halves = occ_halves(cols);
    float mu = 0.0f, rs = 1.0f, v[8];
    if (OP == ROWS_NORM) norm_stats(in, r, cols, &mu, &rs);
    unsigned gtop[8], gbot[8], key[8];  // per value slot: the largest key, the largest flipped key (the smallest value)
    for (int j = 0; j < 8; j++) gtop[j] = gbot[j] = 0u;
    // U chunks' loads issued before any is computed: a lane's loads wait on nothing else
    const int U = OP >= ROWS_GELU ? 4 : 2;
    for (int c1 = 0; c1 < cols; c1 += U * 256) {
        Pack<8> raw[U][src_loads<OP>()];
        for (int u = 0; u < U; u++)
            if (c1 + u * 256 + lane * 8 < cols) src_fetch<OP, 8>(raw[u], in, r, c1 + u * 256 + lane * 8, cols);
        for (int u = 0; u < U; u++) {
            int c = c1 + u * 256 + lane * 8;
            if (c >= cols) break;
            float w[8], b[8];
            if (OP == ROWS_NORM) norm_params<8>(w, b, in, c);
            src_values<OP, 8>(v, raw[u], c, cols, w, b, mu, rs);
            for (int j = 0; j < 8; j++) { key[j] = ord_key(v[j]); gtop[j] = max(gtop[j], key[j]); gbot[j] = max(gbot[j], ~key[j]); }
            if (halves) {
                *(uint4 *)(keys16 + c) = make_uint4(key[0] >> 16 | (key[1] & 0xffff0000u), key[2] >> 16 | (key[3] & 0xffff0000u),
                                                    key[4] >> 16 | (key[5] & 0xffff0000u), key[6] >> 16 | (key[7] & 0xffff0000u));
            } else {
                *(uint4 *)(keys + c) = make_uint4(key[0], key[1], key[2], key[3]);
                *(uint4 *)(keys + c + 4) = make_uint4(key[4], key[5], key[6], key[7]);
            }
        }
    }
    int ktop = cols - p.ihi, kbot = p.ilo + 1, top = p.ihi == cols - 1;
    unsigned ttop = group_threshold(gtop, p.ghi, ktop, ctop), tbot = group_threshold(gbot, p.glo, kbot + 1, cbot), kmax = 0u, kmin = 0u;
    for (int j = 0; j < 8; j++) { kmax = max(kmax, gtop[j]); kmin = max(kmin, gbot[j]); }
    float xmax = key_float(__reduce_max_sync(0xffffffffu, kmax)), xmin = key_float(~__reduce_max_sync(0xffffffffu, kmin));
    // the candidates above each threshold, one of each tail a lane per round, placed by a ballot in
    // lane order (the same list run after run). Halves: the columns whose upper half is at or above
    // the threshold's (a few more than needed), made exactly again afterwards.
    int ntop = 0, nbot = 0;
    unsigned below = (1u << lane) - 1u, htop = ttop >> 16, hbot = tbot >> 16;
    for (int c0 = 0; c0 < cols; c0 += 256) {
        int c = c0 + lane * 8;
        unsigned mtop = 0u, mbot = 0u;
        if (c < cols && halves) {
            uint4 q = *(const uint4 *)(keys16 + c);
            unsigned h[4] = { q.x, q.y, q.z, q.w };
            for (int j = 0; j < 8; j++) {
                unsigned u = h[j / 2] >> 16 * (j % 2) & 0xffffu;
                mtop |= (unsigned)(u >= htop) << j;
                mbot |= (unsigned)((u ^ 0xffffu) >= hbot) << j;
            }
        } else if (c < cols) {
            uint4 a = *(const uint4 *)(keys + c), b = *(const uint4 *)(keys + c + 4);
            unsigned k[8] = { a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w };
            for (int j = 0; j < 8; j++) { mtop |= (unsigned)(k[j] > ttop) << j; mbot |= (unsigned)(~k[j] > tbot) << j; }
        }
        while (__any_sync(0xffffffffu, mtop | mbot)) {
            unsigned kt = 0u, kb = 0u, bt = __ballot_sync(0xffffffffu, mtop), bb = __ballot_sync(0xffffffffu, mbot);
            if (mtop) {
                int cj = c + __ffs(mtop) - 1;
                kt = halves ? cj : keys[cj];
                mtop &= mtop - 1;
            }
            if (mbot) {
                int cj = c + __ffs(mbot) - 1;
                kb = halves ? cj : ~keys[cj];
                mbot &= mbot - 1;
            }
            int it = ntop + __popc(bt & below), ib = nbot + __popc(bb & below);
            if (bt >> lane & 1 && it < OCC_CAND) ctop[it] = kt;
            if (bb >> lane & 1 && ib < OCC_CAND) cbot[ib] = kb;
            ntop += __popc(bt);
            nbot += __popc(bb);
        }
    }
    __syncwarp();
    if (halves) {
        ntop = exact_candidates<OP>(ctop, ntop, ttop, 0u, in, r, cols, mu, rs);
        nbot = exact_candidates<OP>(cbot, nbot, tbot, ~0u, in, r, cols, mu, rs);
    }
    // v[ihi], v[ihi + 1] are the (cols - ihi)-th and the next largest; v[ilo], v[ilo + 1] the
    // (ilo + 1)-th and the next smallest (the largest flipped keys)
    unsigned h0, h1, l0, l1;
    if (ntop > OCC_CAND) {
        uint2 t = row_kth<OP>(ktop, 1, 0u, halves ? NULL : keys, in.x, in.w, in.b, r, cols, mu, rs);
        h0 = t.x; h1 = t.y;  // (unused when top)
    } else {
        uint2 t = kth_pair(ktop, 1, ctop, ntop, ttop);
        h0 = t.x; h1 = t.y;
    }
    if (nbot > OCC_CAND) {
        uint2 t = row_kth<OP>(kbot, 0, ~0u, halves ? NULL : keys, in.x, in.w, in.b, r, cols, mu, rs);
        l0 = t.x; l1 = t.y;
    } else {
        uint2 t = kth_pair(kbot, 0, cbot, nbot, tbot);
        l0 = t.x; l1 = t.y;
    }
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
    float d[8];
    occ_clamp<8>(v, d, b.x, b.y);
    store_bf16<8>(dense + i, d);
}

// quantize_rows with OCC: the source's rows clamped to their quantiles, quantized per row from
// the clamped absmax; their bounds into o, and R into o's dense or (fold) the codes
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
    rows_codes(codes, codes_t, scales, src, o->bounds, o->dense, o->fold, rows, cols, f, st);
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
