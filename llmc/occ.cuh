// defines: OccPlan, occ_plan, Occ, OccColumns, occ_quantize_rows, occ_compensate, occ_transpose, occ_compensate_grad
// OCC on the GPU (SPEC.md 4, RECIPE.md 5): each row of a 4-bit linear's input is clamped to its
// own quantiles [q(1 - alpha), q(alpha)], its scale taken from the clamped row, and the residual
// R = X - clamp(X) rounded to BF16 (at most cap entries a row) is added back with FP32
// accumulation: y += R W^T in the forward, dW += G^T R in the backward. Bounds, codes and
// residuals are the CPU occ_clamp_rows' bit for bit (test/test_quant_gpu).
//
// Selection without a sort, a warp per row. The k-th largest value of a row is at least the
// smallest of the maxima of any 32 J disjoint groups (32 J >= k): every group holds a value that
// large. So those maxima give a threshold with at least k values above it, typically a few k; the
// values above it go to shared memory, where a bisection on the bits of their order-preserving
// keys finds the exact k-th, and one counting pass its neighbour (the quantile interpolates the
// two). (More than OCC_CAND above it: both count over the whole row instead; slower, same answer.)
// Compensation: R's entries are listed per row (the forward makes them a dense matrix for a BF16
// GEMM) and, after a deterministic counting sort, per column (the backward: a block per run of up
// to OCC_CH entries of a column gathers G's rows; a channel can hold an outlier in every row, so a
// column is cut into runs). G is BF16: a nonlinearity's gradient (dGELU, dSwiGLU) comes
// materialized by quantize_grad's codes pass, once, rather than remade per entry (that was 10 of
// 27 ms of OCC a step at GPT-2 124M, 8k tokens).
// No float atomics: every sum runs in a fixed order, so runs repeat bit for bit.
#ifndef LLMC_OCC_CUH
#define LLMC_OCC_CUH

#include "quantize.cuh"
#include "matmul.cuh"

#define OCC_WARPS 4      // rows per block of the selection
#define OCC_CAND 512     // candidates per tail a warp keeps in shared memory
#define OCC_RB 32        // rows per block of the transposition (its placing runs through them in order, a lane per row)
#define OCC_CH 128       // entries of a column per block of the backward
#define OCC_CHUNKS 32    // runs of row blocks the transposition's column prefix sums are cut into

// where a row's quantiles sit, fixed by its width and alpha (quant.h's positions, as the CPU's)
typedef struct {
    int cols;
    int ilo, ihi;        // v[i] and v[i + 1] of the ascending row, interpolated by flo / fhi
    float flo, fhi;
    int cap;             // most outliers a row can have: ilo + 1 below lo, cols - 1 - ihi above hi
    int jlo, jhi;        // groups per lane behind each threshold (1, 2, 4, 8; 0: every value is a candidate)
} OccPlan;

static int occ_groups(int rank) { int j = ceil_div(rank, 32); return j <= 1 ? 1 : j <= 2 ? 2 : j <= 4 ? 4 : j <= 8 ? 8 : 0; }

static OccPlan occ_plan(int cols, float alpha) {
    OccPlan p;
    p.cols = cols;
    quantile_index(cols, 1.0 - (double)alpha, &p.ilo, &p.flo);
    quantile_index(cols, (double)alpha, &p.ihi, &p.fhi);
    p.cap = p.ilo + 1 + cols - 1 - p.ihi;
    p.jlo = occ_groups(p.ilo + 2);     // ranks from the bottom: ilo + 1 and ilo + 2
    p.jhi = occ_groups(cols - p.ihi);  // from the top: cols - ihi and cols - ihi - 1
    return p;
}

// a linear input's OCC scratch for one forward
typedef struct {
    OccPlan plan;
    float2 *bounds;      // (rows) each row's [lo, hi]
    int *slot_col;       // (cap, rows) each row's outliers: input column and residual, the row's
    float *slot_val;     // entries first, then zeros (entry-major: a thread per row reads coalesced)
    bf16 *dense;         // (rows, cols) R as a dense matrix, for the forward's GEMM
} Occ;

// R by input column, kept per layer for the backward: column k's entries (rows ascending) are
// start[k] .. start[k + 1] - 1 of row / val, cut into items of at most OCC_CH entries (item_start)
// so that the backward spreads a column holding many outliers over many blocks
typedef struct {
    int *start;          // (K + 1)
    int *item_start;     // (K + 1)
    int *row;            // (cap * rows)
    float *val;
} OccColumns;

// items the backward's partial sums may need: (items_max, M) floats of scratch
static size_t occ_items_max(const OccPlan *p, int rows) { return (size_t)p->cap * rows / OCC_CH + p->cols + 1; }

// float -> unsigned with the same order (-0 taken as +0); and back
__device__ inline unsigned ord_key(float x) {
    unsigned u = __float_as_uint(x + 0.0f);
    return u & 0x80000000u ? ~u : u | 0x80000000u;
}
__device__ inline float key_float(unsigned k) { return __uint_as_float(k & 0x80000000u ? k & 0x7fffffffu : ~k); }

// the smallest over the warp of the J group maxima of each lane (value slot k is in group k % J)
__device__ inline unsigned group_threshold(const unsigned *gmax, int J) {
    if (J == 0) return 0u;
    unsigned m[8];
    for (int k = 0; k < 8; k++) m[k] = gmax[k];
    #pragma unroll
    for (int w = 4; w >= 1; w /= 2)
        if (J <= w) for (int k = 0; k < w; k++) m[k] = max(m[k], m[k + w]);
    unsigned t = m[0];
    for (int k = 1; k < 8; k++) if (k < J) t = min(t, m[k]);
    return __reduce_min_sync(0xffffffffu, t);
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

// OCC's first pass, a warp per row: the quantiles lo, hi, the scale of the clamped row, and the
// outliers (column, x - clamp(x)) in a fixed order (by chunk of 256 columns, value slot, lane)
template <int OP>
__global__ void __launch_bounds__(OCC_WARPS * 32) occ_rows_kernel(float *scales, Occ o, RowSource in, int rows, Format f) {
    __shared__ unsigned cand[OCC_WARPS][2][OCC_CAND];
    const OccPlan &p = o.plan;
    int cols = p.cols, w = threadIdx.x / 32, lane = threadIdx.x % 32, r = blockIdx.x * OCC_WARPS + w;
    if (r >= rows) return;
    unsigned below = (1u << lane) - 1u;
    float mu = 0.0f, rs = 1.0f, v[8] = { 0.0f };
    if (OP == ROWS_NORM) norm_stats(in, r, cols, &mu, &rs);
    unsigned gtop[8], gbot[8];  // per value slot: the largest key, the largest flipped key (the smallest value)
    for (int j = 0; j < 8; j++) gtop[j] = gbot[j] = 0u;
    for (int c = lane * 8; c < cols; c += 256) {
        src_values8<OP>(v, in, r, c, cols, mu, rs);
        for (int j = 0; j < 8; j++) { unsigned key = ord_key(v[j]); gtop[j] = max(gtop[j], key); gbot[j] = max(gbot[j], ~key); }
    }
    unsigned ttop = group_threshold(gtop, p.jhi), tbot = group_threshold(gbot, p.jlo), kmax = 0u, kmin = 0u;
    for (int j = 0; j < 8; j++) { kmax = max(kmax, gtop[j]); kmin = max(kmin, gbot[j]); }
    float xmax = key_float(__reduce_max_sync(0xffffffffu, kmax)), xmin = key_float(~__reduce_max_sync(0xffffffffu, kmin));
    // the candidates above each threshold (every lane runs every iteration: the ballots need them all)
    unsigned *ctop = cand[w][0], *cbot = cand[w][1];
    int ntop = 0, nbot = 0;
    for (int c0 = 0; c0 < cols; c0 += 256) {
        int c = c0 + lane * 8, live = c < cols;
        if (live) src_values8<OP>(v, in, r, c, cols, mu, rs);
        for (int j = 0; j < 8; j++) {
            unsigned key = ord_key(v[j]);
            int pt = live && key > ttop, pb = live && ~key > tbot;
            unsigned bt = __ballot_sync(0xffffffffu, pt), bb = __ballot_sync(0xffffffffu, pb);
            int it = ntop + __popc(bt & below), ib = nbot + __popc(bb & below);
            if (pt && it < OCC_CAND) ctop[it] = key;
            if (pb && ib < OCC_CAND) cbot[ib] = ~key;
            ntop += __popc(bt);
            nbot += __popc(bb);
        }
    }
    __syncwarp();
    // v[ihi], v[ihi + 1] are the (cols - ihi)-th and the next largest; v[ilo], v[ilo + 1] the
    // (ilo + 1)-th and the next smallest (the largest flipped keys)
    int ktop = cols - p.ihi, kbot = p.ilo + 1, top = p.ihi == cols - 1;
    unsigned h0 = kth_largest<OP>(ktop, ctop, ntop, ttop, 0u, in, r, cols, mu, rs);
    unsigned h1 = top ? h0 : kth_next<OP>(ktop, h0, 1, ctop, ntop, ttop, 0u, in, r, cols, mu, rs);
    unsigned l0 = kth_largest<OP>(kbot, cbot, nbot, tbot, ~0u, in, r, cols, mu, rs);
    unsigned l1 = kth_next<OP>(kbot, l0, 0, cbot, nbot, tbot, ~0u, in, r, cols, mu, rs);
    float lo = quantile_lerp(key_float(~l0), key_float(~l1), p.flo);
    float hi = top ? key_float(h0) : quantile_lerp(key_float(h0), key_float(h1), p.fhi);
    // the clamped row spans [clamp(min), clamp(max)]: its absmax, as the CPU's over every value
    float cmax = fminf(fmaxf(xmax, lo), hi), cmin = fminf(fmaxf(xmin, lo), hi);
    if (lane == 0) { scales[r] = fmaxf(fabsf(cmax), fabsf(cmin)) / format_max(f); o.bounds[r] = make_float2(lo, hi); }
    int nout = 0;
    for (int c0 = 0; c0 < cols; c0 += 256) {
        int c = c0 + lane * 8, live = c < cols;
        if (live) src_values8<OP>(v, in, r, c, cols, mu, rs);
        for (int j = 0; j < 8; j++) {
            float res = live ? bf16_round(v[j] - fminf(fmaxf(v[j], lo), hi)) : 0.0f;
            unsigned b = __ballot_sync(0xffffffffu, res != 0.0f);
            int i = nout + __popc(b & below);
            if (res != 0.0f && i < p.cap) { o.slot_col[(size_t)i * rows + r] = c + j; o.slot_val[(size_t)i * rows + r] = res; }
            nout += __popc(b);
        }
    }
    for (int i = nout + lane; i < p.cap; i += 32) { o.slot_col[(size_t)i * rows + r] = 0; o.slot_val[(size_t)i * rows + r] = 0.0f; }
}

// R (rows, K) as a dense BF16 matrix, over zeros: slot i / rows of row i % rows
__global__ void occ_dense_kernel(bf16 *r, const int *slot_col, const float *slot_val, int cap, int rows, int K) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (size_t)cap * rows && slot_val[i] != 0.0f) r[i % rows * K + slot_col[i]] = __float2bfloat16(slot_val[i]);
}

// the transposition, a counting sort in three steps. 1: each block of OCC_RB rows counts its
// entries per column, (blocks, K)
__global__ void occ_count_kernel(int *bcount, const int *slot_col, const float *slot_val, int cap, int rows, int K) {
    extern __shared__ int cnt[];
    for (int k = threadIdx.x; k < K; k += blockDim.x) cnt[k] = 0;
    __syncthreads();
    int r0 = blockIdx.x * OCC_RB, nr = min(OCC_RB, rows - r0);
    for (int e = threadIdx.x; e < cap * nr; e += blockDim.x) {
        size_t i = (size_t)(e / nr) * rows + r0 + e % nr;
        if (slot_val[i] != 0.0f) atomicAdd(&cnt[slot_col[i]], 1);
    }
    __syncthreads();
    for (int k = threadIdx.x; k < K; k += blockDim.x) bcount[(size_t)blockIdx.x * K + k] = cnt[k];
}

// exclusive prefix of x over the block (blockDim.x a multiple of 32), plus carry, which then
// becomes carry + the block's total; sums: 32 ints of shared memory
__device__ inline int block_scan(int x, int *carry, int *sums) {
    int lane = threadIdx.x % 32, w = threadIdx.x / 32, inc = x;
    for (int o = 1; o < 32; o <<= 1) { int y = __shfl_up_sync(0xffffffffu, inc, o); if (lane >= o) inc += y; }
    if (lane == 31) sums[w] = inc;
    __syncthreads();
    if (w == 0) {
        int t = lane < (int)blockDim.x / 32 ? sums[lane] : 0;
        for (int o = 1; o < 32; o <<= 1) { int y = __shfl_up_sync(0xffffffffu, t, o); if (lane >= o) t += y; }
        sums[lane] = t;
    }
    __syncthreads();
    int excl = *carry + (w ? sums[w - 1] : 0) + inc - x;
    __syncthreads();
    if (threadIdx.x == blockDim.x - 1) *carry = excl + x;
    __syncthreads();
    return excl;
}

// 2: each row block's offset within its column, in two levels. 2a (a thread per column and chunk
// of `per` row blocks): the offsets within the chunk, in place, and the chunk's total into ctot
// (OCC_CHUNKS, K). Eight counts' loads in flight: one thread per column with a serial loop over
// every row block was the slowest step (a single block: 1.7 ms a step at 8k tokens).
__global__ void occ_colscan_kernel(int *bcount, int *ctot, int nb, int per, int K) {
    int k = blockIdx.x * blockDim.x + threadIdx.x, b0 = blockIdx.y * per, b1 = min(nb, b0 + per);
    if (k >= K) return;
    int tot = 0;
    for (int b = b0; b < b1; b += 8) {
        int c[8];
        for (int u = 0; u < 8; u++) c[u] = b + u < b1 ? bcount[(size_t)(b + u) * K + k] : 0;
        for (int u = 0; u < 8 && b + u < b1; u++) { bcount[(size_t)(b + u) * K + k] = tot; tot += c[u]; }
    }
    ctot[(size_t)blockIdx.y * K + k] = tot;
}

// 2b (one block): each chunk's offset within its column (in place), the columns' starts (an
// exclusive scan of their totals) and their items' starts
__global__ void __launch_bounds__(512) occ_scan_kernel(int *start, int *item_start, int *ctot, int K) {
    __shared__ int sums[32], carry[2];
    if (threadIdx.x < 2) carry[threadIdx.x] = 0;
    __syncthreads();
    for (int k0 = 0; k0 < K; k0 += blockDim.x) {
        int k = k0 + threadIdx.x, tot = 0, c[OCC_CHUNKS];
        if (k < K) {  // the loads first, all in flight (a store between them kept them one at a time)
            for (int p = 0; p < OCC_CHUNKS; p++) c[p] = ctot[(size_t)p * K + k];
            for (int p = 0; p < OCC_CHUNKS; p++) { ctot[(size_t)p * K + k] = tot; tot += c[p]; }
        }
        int s = block_scan(tot, &carry[0], sums), it = block_scan((tot + OCC_CH - 1) / OCC_CH, &carry[1], sums);
        if (k < K) { start[k] = s; item_start[k] = it; }
    }
    if (threadIdx.x == 0) { start[K] = carry[0]; item_start[K] = carry[1]; }
}

// 3 (a warp per block of rows): the entries to their places, row after row; a row's columns are
// distinct, so the lanes never share a column's counter. The block's slots come into shared
// memory first, many loads in flight (placed straight from memory, each row waited for its own).
__global__ void occ_place_kernel(int *crow, float *cval, const int *start, const int *bcount, const int *ctot, int per,
                                 const int *slot_col, const float *slot_val, int cap, int rows, int K) {
    extern __shared__ int next[];                // (K) the block's next place in each column
    int cp = cap | 1;                            // a row's slots: an odd stride, no bank conflicts either way
    int *s_col = next + K;                       // (OCC_RB, cp) the block's slots
    float *s_val = (float *)(s_col + cp * OCC_RB);
    const int *chunk = ctot + (size_t)(blockIdx.x / per) * K;
    int r0 = blockIdx.x * OCC_RB, nr = min(OCC_RB, rows - r0);
    for (int k = threadIdx.x; k < K; k += 32) next[k] = start[k] + chunk[k] + bcount[(size_t)blockIdx.x * K + k];
    #pragma unroll 8
    for (int i = 0; i < cap; i++) {  // lane = row: coalesced
        size_t e = (size_t)i * rows + r0 + min((int)threadIdx.x, nr - 1);
        s_col[threadIdx.x * cp + i] = slot_col[e];
        s_val[threadIdx.x * cp + i] = slot_val[e];
    }
    __syncwarp();
    for (int j = 0; j < nr; j++) {
        for (int i = threadIdx.x; i < cap; i += 32) {
            float v = s_val[j * cp + i];
            if (v == 0.0f) continue;
            int pos = next[s_col[j * cp + i]]++;
            crow[pos] = r0 + j;
            cval[pos] = v;
        }
        __syncwarp();
    }
}

// entries e .. e + 3 of an item that ends at e1: their rows and values (past e1: the last row
// again, with value 0)
__device__ inline void occ_entries4(int *row, float *val, const OccColumns &oc, int e, int e1) {
    for (int u = 0; u < 4; u++) {
        int i = min(e + u, e1 - 1);
        row[u] = oc.row[i];
        val[u] = e + u < e1 ? oc.val[i] : 0.0f;
    }
}

// dW (M, K) += G^T R in two steps, G (rows, M) BF16. 1: a block per item (up to OCC_CH entries
// of one column k), threads over the outputs j: the item's sum of r * G[row, j] into partial
// (items, M). Four entries a step, in a pipeline: the entries two steps ahead and G's rows one
// step ahead load while a step sums, so that G's four loads go out together (loaded and summed in
// one step, SASS showed each load waiting for the last one's FMAs). Past the item's end: the last
// row again, times 0 (exact).
__global__ void occ_grad_items_kernel(float *partial, OccColumns oc, const bf16 *g, int M, int K) {
    int item = blockIdx.x;
    if (item >= oc.item_start[K]) return;
    int lo = 0, hi = K;  // the column: the last k with item_start[k] <= item
    while (hi - lo > 1) { int mid = (lo + hi) / 2; if (oc.item_start[mid] <= item) lo = mid; else hi = mid; }
    int e0 = oc.start[lo] + (item - oc.item_start[lo]) * OCC_CH, e1 = min(oc.start[lo + 1], e0 + OCC_CH);
    for (int j = threadIdx.x * 8; j < M; j += blockDim.x * 8) {
        float acc[8] = { 0.0f }, rv[4], rn[4];
        int row[4];
        Pack<8> gn[4];
        occ_entries4(row, rv, oc, e0, e1);
        for (int u = 0; u < 4; u++) { gn[u] = pack_load<8>(g + (size_t)row[u] * M + j); rn[u] = rv[u]; }
        occ_entries4(row, rv, oc, e0 + 4, e1);
        for (int e = e0; e < e1; e += 4) {
            Pack<8> gc[4];
            float rc[4];
            for (int u = 0; u < 4; u++) {
                gc[u] = gn[u], rc[u] = rn[u];
                gn[u] = pack_load<8>(g + (size_t)row[u] * M + j), rn[u] = rv[u];
            }
            occ_entries4(row, rv, oc, e + 8, e1);
            for (int u = 0; u < 4; u++) {
                float v[8];
                pack_floats<8>(v, gc[u]);
                for (int t = 0; t < 8; t++) acc[t] = fmaf(rc[u], v[t], acc[t]);
            }
        }
        float4 *d = (float4 *)(partial + (size_t)item * M + j);
        d[0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
        d[1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
    }
}

// 2: a block per 32 columns k and 32 outputs j: each column's items' partial sums in order (a
// warp per column, its lanes over j: coalesced reads), then through shared memory into dW[j, k]
// with the lanes over k (coalesced: a block per column wrote a float per 32-byte sector). With DGE
// (dge_k > 0) the sum enters divided by f'(W / s_w): model_apply_dge later scales the whole
// gradient by it, and the compensation's own gradient is exact.
__global__ void __launch_bounds__(256) occ_grad_sum_kernel(float *dW, const float *partial, OccColumns oc, int M, int K, const bf16 *W,
                                                           const float *sw, Format fw, float dge_k) {
    __shared__ float sum[32][33];
    __shared__ int has[32];
    int k0 = blockIdx.x * 32, j0 = blockIdx.y * 32, lane = threadIdx.x % 32, j = j0 + lane;
    for (int kk = threadIdx.x / 32; kk < 32; kk += blockDim.x / 32) {
        int k = k0 + kk, i0 = k < K ? oc.item_start[k] : 0, i1 = k < K ? oc.item_start[k + 1] : 0;
        float a = 0.0f;
        if (j < M) for (int i = i0; i < i1; i++) a += partial[(size_t)i * M + j];
        sum[kk][lane] = a;
        if (lane == 0) has[kk] = i1 > i0;
    }
    __syncthreads();
    for (int jj = threadIdx.x / 32; jj < 32; jj += blockDim.x / 32) {
        int k = k0 + lane, jo = j0 + jj;
        if (k >= K || jo >= M || !has[lane]) continue;
        size_t w = (size_t)jo * K + k;
        float v = sum[lane][jj];
        dW[w] += dge_k > 0.0f ? v / dge_factor(__bfloat162float(W[w]), sw[jo], fw, dge_k) : v;
    }
}

// quantize_rows with OCC: the source's rows clamped to their quantiles, quantized per row from
// the clamped absmax; the outliers into o's slots
static void occ_quantize_rows(fp8 *codes, fp8 *codes_t, float *scales, const RowSource *src, int rows, Format f, const Occ *o,
                              cudaStream_t st) {
    int cols = o->plan.cols;
    check_quantize("occ_quantize_rows", f, rows, cols, codes_t != NULL);
    if (src->op > ROWS_SWIGLU) die("occ_quantize_rows: source %d is a gradient's", src->op);
    void (*const kernel[])(float *, Occ, RowSource, int, Format) = {
        occ_rows_kernel<ROWS_PLAIN>, occ_rows_kernel<ROWS_NORM>, occ_rows_kernel<ROWS_GELU>, occ_rows_kernel<ROWS_SWIGLU> };
    kernel[src->op]<<<ceil_div(rows, OCC_WARPS), OCC_WARPS * 32, 0, st>>>(scales, *o, *src, rows, f);
    CUDA_CHECK(cudaGetLastError());
    rows_codes(codes, codes_t, scales, src, o->bounds, rows, cols, f, st);
}

// y (rows, M) += R W^T: the forward's compensation, W (M, K) the BF16 weights. R goes dense
// into o->dense (exact: its entries are BF16 numbers) for a BF16 GEMM on the tensor cores, which
// at 2% of the entries beats a sparse kernel over the slots (that one read W's rows at random
// for every outlier, at 90% of the shared-memory pipe: 4.3 ms a step at GPT-2 124M, 8k tokens).
static void occ_compensate(bf16 *y, const Occ *o, const bf16 *W, int rows, int M, int K, cudaStream_t st) {
    if (K != o->plan.cols) die("occ_compensate: %d inputs, the plan's %d", K, o->plan.cols);
    size_t slots = (size_t)o->plan.cap * rows;
    CUDA_CHECK(cudaMemsetAsync(o->dense, 0, (size_t)rows * K * sizeof(bf16), st));
    occ_dense_kernel<<<ceil_div(slots, 256), 256, 0, st>>>(o->dense, o->slot_col, o->slot_val, o->plan.cap, rows, K);
    CUDA_CHECK(cudaGetLastError());
    matmul_forward(y, o->dense, W, NULL, y, NULL, rows, K, M, st);
}

// the transposition's scratch, in ints: the row blocks' counts (ceil(rows / OCC_RB), K) and the
// chunks' totals (OCC_CHUNKS, K)
static size_t occ_count_ints(int rows, int K) { return (size_t)(ceil_div(rows, OCC_RB) + OCC_CHUNKS) * K; }

// R by column, for the backward. bcount: occ_count_ints scratch.
static void occ_transpose(OccColumns *oc, const Occ *o, int rows, int *bcount, cudaStream_t st) {
    int K = o->plan.cols, nb = ceil_div(rows, OCC_RB), per = ceil_div(nb, OCC_CHUNKS);
    int *ctot = bcount + (size_t)nb * K;
    occ_count_kernel<<<nb, 256, K * sizeof(int), st>>>(bcount, o->slot_col, o->slot_val, o->plan.cap, rows, K);
    occ_colscan_kernel<<<dim3(ceil_div(K, 128), OCC_CHUNKS), 128, 0, st>>>(bcount, ctot, nb, per, K);
    occ_scan_kernel<<<1, 512, 0, st>>>(oc->start, oc->item_start, ctot, K);
    size_t smem = (K + 2 * (size_t)(o->plan.cap | 1) * OCC_RB) * sizeof(int);
    if (smem > (200 << 10)) die("occ_transpose: %d columns and %d outliers a row do not fit in shared memory", K, o->plan.cap);
    static int opted_in;
    if (!opted_in) { CUDA_CHECK(cudaFuncSetAttribute(occ_place_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 << 10)); opted_in = 1; }
    occ_place_kernel<<<nb, 32, smem, st>>>(oc->row, oc->val, oc->start, bcount, ctot, per, o->slot_col, o->slot_val, o->plan.cap,
                                           rows, K);
    CUDA_CHECK(cudaGetLastError());
}

// dW (M, K) += G^T R: the compensation's weight gradient, G (rows, M) BF16 (a nonlinearity's
// gradient as quantize_grad's codes pass wrote it: RowSource.out). dge_k > 0: W, its scales sw and
// format fw give the DGE factor it is divided by (see occ_grad_sum_kernel). partial:
// (occ_items_max, M) scratch.
static void occ_compensate_grad(float *dW, const OccColumns *oc, const OccPlan *p, const bf16 *g, int rows, int M, int K,
                                const bf16 *W, const float *sw, Format fw, float dge_k, float *partial, cudaStream_t st) {
    if (M % 8 != 0) die("occ_compensate_grad: %d outputs, not a multiple of 8", M);
    int threads = min(256, ceil_div(M / 8, 32) * 32);
    occ_grad_items_kernel<<<(unsigned)occ_items_max(p, rows), threads, 0, st>>>(partial, *oc, g, M, K);
    occ_grad_sum_kernel<<<dim3(ceil_div(K, 32), ceil_div(M, 32)), 256, 0, st>>>(dW, partial, *oc, M, K, W, sw, fw, dge_k);
    CUDA_CHECK(cudaGetLastError());
}

#endif
