// defines: GemmFp8, fp8_gemm_supported, fp8_gemm, fp8_gemm_tiles_n
// An FP8 GEMM of our own for Hopper (TMA loads, wgmma), so that the quantizers can run in its
// epilogue, which cuBLASLt's cannot do (a row's absmax, a column's over the tile, their scales):
//
//   D (M, N) row-major BF16 = sa[m] sb[n] sum_k A[m, k] B[n, k]
//   A (M, K), B (N, K): E4M3 bytes contiguous along k (TN, as cuBLASLt's OUTER_VEC_32F GEMM the
//   trainer runs elsewhere); sa (M), sb (N): FP32 scales
//
// With bias and row_max (fast sums only), GPT-2's fc forward: D = the product + bias, and each
// row's largest D per tile of BN columns, from which GELU's scales come without a pass over D.
// With pre (M, N), the dGELU epilogue: D is the gradient of GELU's input, v = bf16(bf16(D) *
// gelu'(pre)), the dgrad of fcproj followed by GELU's derivative, and it makes the first pass of
// v's own quantization (quantize_grad's grad_part_kernel, SPEC.md 4) as it goes: per row and tile of
// BN columns, max |v col_scale|; per column and 64 rows, max |v row_scale| and the sum of v (into
// part, laid out as llmc/quantize.cuh's grad_part says). The codes pass then reads v
// once, as a plain gradient; dGELU's second read of the gradient and of pre, and a whole pass,
// are gone. Values are rounded to BF16 before they are reduced, so the scales are exactly those
// quantize_grad makes of the BF16 v.
//
// Layout of the work (dev/cuda/fp8_gemm.cu times the choices against cuBLASLt; dev/NOTES.md):
// a persistent CTA per SM walks output tiles of BM x BN. Warpgroup 0 is the producer: one
// thread issues TMA loads of A's and B's 128-byte k-slices into a ring of STAGES buffers
// (128-byte swizzle, the layout wgmma reads without bank conflicts). The CTAs of a cluster take
// vertically adjacent tiles, so each loads 1 / CLUSTER of B's slice and multicasts it to all.
// Warpgroups 1 and 2 each multiply 64 rows of the tile. Each 128-wide k-slice is summed by the
// tensor cores into a fresh partial sum (m64n128k32 wgmmas, a half of the tile at a time), then
// added in FP32 on the CUDA cores: Hopper's FP8 accumulation keeps fewer bits than FP32 (a k of
// 32768 drifts past BF16's rounding), and cuBLASLt promotes the same way. With fast (4-bit codes,
// whose products it sums exactly at the trainer's k: dev/NOTES.md, session 29) the whole k stays
// in the tensor cores, m64n256k32 wgmmas into the tile's sums, a slice's in flight while the next
// one's are issued. The epilogue writes the tile into a swizzled BF16 tile in shared memory
// (where TMA put pre's tile during the k loop), and one thread stores it with TMA while the
// warpgroup starts its next tile. What bounds the k loop is shared memory's bandwidth: a k-slice
// writes (BM + BN) x 128 bytes and the wgmmas read each warpgroup's A and all of B.
//
// wgmma exists only on sm_90a: the Makefile builds that target beside plain PTX, whose kernel
// traps; fp8_gemm_supported() says whether this GPU runs it.
#ifndef LLMC_GEMM_FP8_CUH
#define LLMC_GEMM_FP8_CUH

#include <cuda.h>
#include <cudaTypedefs.h>
#include "cuda_common.cuh"
#include "activations.cuh"
#include "quantize.cuh"

#define BM 128
#define BN 256      // a 64 x 256 FP32 sum per consumer warpgroup leaves registers for one 64 x 128 partial sum
#define BK 128      // k per stage: one 128-byte swizzle row of FP8
#define STAGES 3    // as many as fit beside the output tiles
#define GEMM_THREADS 384  // warpgroup 0 loads, 1 and 2 multiply
#ifndef CLUSTER
#define CLUSTER 2   // CTAs of a cluster take vertically adjacent tiles and share B's loads
#endif
#define OUT_BYTES (64 * BN * 2)  // a consumer warpgroup's BF16 output tile, staged for its TMA store
#define GEMM_PART_ROWS 64        // rows of the dGELU epilogue's column partials: a consumer warpgroup's

typedef struct {
    const float *sa, *sb;   // (M), (N)
    int M, N, K;
    // the dGELU epilogue (with pre): the scales of v's quantization, row_scale (M) and col_scale
    // (N), and where the first pass goes (grad_part_floats(M, N, fp8_gemm_tiles_n(N), GEMM_PART_ROWS))
    const float *row_scale, *col_scale;
    float *part;
    // fast: the sums stay in the tensor cores, not promoted to FP32 every BK (the trainer's
    // --fast-accum, for 4-bit codes only; not with pre). Then with bias (N), D = the product + bias,
    // and with row_max (M, fp8_gemm_tiles_n(N)), each row's largest value of D (signed, as stored)
    // over each tile of BN columns: GELU's scales come from them (quantize.cuh's gelu_part_scales)
    int fast;
    const bf16 *bias;
    float *row_max;
} GemmFp8;

// the tiles' ring; each consumer warpgroup's output tile, then its tile's 64 row and BN column
// scales, twice (the GEMM's and the quantizer's); then the barriers: full and empty per stage,
// pre's per consumer warpgroup
static const size_t GEMM_SMEM_BYTES =
    STAGES * (BM + BN) * BK + 2 * OUT_BYTES + 2 * 2 * (64 + BN) * sizeof(float) + (2 * STAGES + 2) * sizeof(uint64_t) + 1024;

static int fp8_gemm_tiles_n(int N) { return ceil_div(N, BN); }

// ---------------------------------------------------------------------------------------------
// PTX wrappers: mbarriers, TMA, wgmma

__device__ inline uint32_t smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ inline void mbar_init(uint64_t *bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count));
}
__device__ inline void mbar_expect_tx(uint64_t *bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}
// spins until the barrier's phase of the given parity has completed
__device__ inline void mbar_wait(uint64_t *bar, int parity) {
    asm volatile("{\n .reg .pred done;\n WAIT:\n"
                 " mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 " @!done bra WAIT;\n}" ::"r"(smem_addr(bar)), "r"(parity) : "memory");
}
// a box of the tensor map at (c0 along the row, c1 along rows) into shared memory, counted on bar
__device__ inline void tma_load(void *dst, const CUtensorMap *map, uint64_t *bar, int c0, int c1) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];"
                 ::"r"(smem_addr(dst)), "l"(map), "r"(smem_addr(bar)), "r"(c0), "r"(c1) : "memory");
}
// the same, into the same place of every CTA in the mask, each counting on its own bar
__device__ inline void tma_load_multicast(void *dst, const CUtensorMap *map, uint64_t *bar, int c0, int c1, uint16_t mask) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster"
                 " [%0], [%1, {%3, %4}], [%2], %5;"
                 ::"r"(smem_addr(dst)), "l"(map), "r"(smem_addr(bar)), "r"(c0), "r"(c1), "h"(mask) : "memory");
}
// arrives on the barrier at bar's place in CTA cta of the cluster. CTA-scope release, as for a
// local arrive: a cluster-scope one fences every earlier memory access of the thread, ~1 us a time
__device__ inline void mbar_arrive_cluster(uint64_t *bar, uint32_t cta) {
    asm volatile("{\n .reg .b32 remote;\n mapa.shared::cluster.u32 remote, %0, %1;\n"
                 " mbarrier.arrive.shared::cluster.b64 _, [remote];\n}" ::"r"(smem_addr(bar)), "r"(cta) : "memory");
}
__device__ inline uint32_t cluster_rank() {
    uint32_t r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}
__device__ inline void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n barrier.cluster.wait.acquire.aligned;" ::: "memory");
}
// a box of shared memory to the tensor map at (c0 along columns, c1 along rows), as a bulk group
__device__ inline void tma_store(const CUtensorMap *map, const void *src, int c0, int c1) {
    asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];"
                 ::"l"(map), "r"(smem_addr(src)), "r"(c0), "r"(c1) : "memory");
}
// the 128 threads of consumer warpgroup wg (named barrier wg; 0 is __syncthreads')
__device__ inline void warpgroup_sync(int wg) { asm volatile("bar.sync %0, 128;" ::"r"(wg) : "memory"); }

// wgmma's shared-memory descriptor of a K-major tile stored as 128-byte swizzled rows: start
// address, stride 1024 bytes between groups of 8 rows, swizzle mode 1 (128 bytes)
__device__ inline uint64_t smem_desc(const void *p) {
    return (uint64_t)((smem_addr(p) & 0x3FFFF) >> 4) | (1ull << 16) | ((uint64_t)(1024 >> 4) << 32) | (1ull << 62);
}

__device__ inline void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ inline void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
// until at most N groups of this warpgroup are in flight
template <int N> __device__ inline void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory"); }
// keeps the compiler from reading an accumulator before the wgmma that writes it has completed
__device__ inline void reg_fence(float &r) { asm volatile("" : "+f"(r)::"memory"); }

#define WGMMA_M64N128K32(acc, c)                                                                      \
    asm volatile("wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3"                              \
                 " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"            \
                 " %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"   \
                 " %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"   \
                 " %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63},"  \
                 " %64, %65, " acc ", 1, 1;"                                                          \
                 : c(d[0]), c(d[1]), c(d[2]), c(d[3]), c(d[4]), c(d[5]), c(d[6]), c(d[7]), c(d[8]), c(d[9]),            \
                   c(d[10]), c(d[11]), c(d[12]), c(d[13]), c(d[14]), c(d[15]), c(d[16]), c(d[17]), c(d[18]), c(d[19]),  \
                   c(d[20]), c(d[21]), c(d[22]), c(d[23]), c(d[24]), c(d[25]), c(d[26]), c(d[27]), c(d[28]), c(d[29]),  \
                   c(d[30]), c(d[31]), c(d[32]), c(d[33]), c(d[34]), c(d[35]), c(d[36]), c(d[37]), c(d[38]), c(d[39]),  \
                   c(d[40]), c(d[41]), c(d[42]), c(d[43]), c(d[44]), c(d[45]), c(d[46]), c(d[47]), c(d[48]), c(d[49]),  \
                   c(d[50]), c(d[51]), c(d[52]), c(d[53]), c(d[54]), c(d[55]), c(d[56]), c(d[57]), c(d[58]), c(d[59]),  \
                   c(d[60]), c(d[61]), c(d[62]), c(d[63])                                                               \
                 : "l"(da), "l"(db))
#define OUT(x) "=f"(x)
#define INOUT(x) "+f"(x)
// d (64 x 128 over the warpgroup) = [d +] A (64 x 32) B (128 x 32)^T, E4M3 operands in shared
// memory. The first product of a sum does not read d, so the compiler knows d's old values are dead.
template <bool ACCUMULATE> __device__ inline void wgmma_m64n128k32(float (&d)[64], uint64_t da, uint64_t db) {
    if (ACCUMULATE) WGMMA_M64N128K32("1", INOUT);
    else WGMMA_M64N128K32("0", OUT);
}
#undef OUT
#undef INOUT
#undef WGMMA_M64N128K32

// d (64 x 256 over the warpgroup, its halves d[0] and d[1] laid out as m64n128k32's) += A (64 x
// 32) B (256 x 32)^T: one instruction reads A once for the whole width (two halves read it twice)
#define D8(h, i) "+f"(d[h][i]), "+f"(d[h][i + 1]), "+f"(d[h][i + 2]), "+f"(d[h][i + 3]), "+f"(d[h][i + 4]), "+f"(d[h][i + 5]), \
                 "+f"(d[h][i + 6]), "+f"(d[h][i + 7])
__device__ inline void wgmma_m64n256k32(float (&d)[2][64], uint64_t da, uint64_t db) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n256k32.f32.e4m3.e4m3"
                 " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
                 " %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
                 " %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
                 " %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63,"
                 " %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79,"
                 " %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95,"
                 " %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111,"
                 " %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127},"
                 " %128, %129, 1, 1, 1;"
                 : D8(0, 0), D8(0, 8), D8(0, 16), D8(0, 24), D8(0, 32), D8(0, 40), D8(0, 48), D8(0, 56),
                   D8(1, 0), D8(1, 8), D8(1, 16), D8(1, 24), D8(1, 32), D8(1, 40), D8(1, 48), D8(1, 56)
                 : "l"(da), "l"(db));
}
#undef D8

// a and b rounded to BF16 (to nearest, ties to even: quant.h's bf16_round) in one conversion, as
// the 32-bit word they are stored as, and as floats again
__device__ inline uint32_t bf16x2_bits(float a, float b) {
    __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *(const uint32_t *)&h;
}
__device__ inline float2 round_bf16x2(float a, float b) { return bf16x2_floats(bf16x2_bits(a, b)); }

// ---------------------------------------------------------------------------------------------

template <bool DGELU, bool FAST>
__global__ void __launch_bounds__(GEMM_THREADS, 1)
fp8_gemm_kernel(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                const __grid_constant__ CUtensorMap map_d, const __grid_constant__ CUtensorMap map_pre, GemmFp8 p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ uint8_t smem_raw[];
    // the swizzle pattern repeats every 1024 bytes: buffers start on such a boundary (an offset
    // into smem_raw, so the compiler knows every access below is to shared memory)
    uint8_t *smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
    uint8_t *sa_tiles = smem;                            // [STAGES][BM][BK]
    uint8_t *sb_tiles = smem + STAGES * BM * BK;         // [STAGES][BN][BK]
    uint8_t *out_tiles = sb_tiles + STAGES * BN * BK;    // [2][BN / 64][64 rows][128 bytes], swizzled
    float *scales = (float *)(out_tiles + 2 * OUT_BYTES);  // [2][2][64 + BN]
    uint64_t *full = (uint64_t *)(scales + 2 * 2 * (64 + BN)), *empty = full + STAGES, *pre_bar = empty + STAGES;
    int wg = threadIdx.x / 128, warp = threadIdx.x / 32 % 4, lane = threadIdx.x % 32;
    int M = p.M, N = p.N;
    // a stage is free once the consumers of every CTA in the cluster are done with it, since each
    // CTA's producer writes its part of B into all of them
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) { mbar_init(&full[s], 1); mbar_init(&empty[s], 8 * CLUSTER); }  // consumer warps
        mbar_init(&pre_bar[0], 1); mbar_init(&pre_bar[1], 1);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    cluster_sync();
    // the cluster walks units of CLUSTER vertically adjacent tiles; this CTA takes the rank-th
    int rank = cluster_rank(), tiles_n = (N + BN - 1) / BN, ktiles = (p.K + BK - 1) / BK;
    GradPart pass1 = grad_part(p.part, M, N, tiles_n, GEMM_PART_ROWS);  // the dGELU epilogue's first pass
    int units = ((M + BM - 1) / BM + CLUSTER - 1) / CLUSTER * tiles_n, first = blockIdx.x / CLUSTER, step = gridDim.x / CLUSTER;

    if (wg == 0) {  // producer; TMA fills the parts of a box outside the matrix with zeros
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
        if (threadIdx.x == 0) {
            int it = 0;
            for (int u = first; u < units; u += step) {
                int m0 = (u / tiles_n * CLUSTER + rank) * BM, n0 = u % tiles_n * BN;
                for (int kt = 0; kt < ktiles; kt++, it++) {
                    int s = it % STAGES;
                    mbar_wait(&empty[s], (it / STAGES & 1) ^ 1);
                    mbar_expect_tx(&full[s], (BM + BN) * BK);
                    tma_load(sa_tiles + s * BM * BK, &map_a, &full[s], kt * BK, m0);
                    tma_load_multicast(sb_tiles + (s * BN + rank * (BN / CLUSTER)) * BK, &map_b, &full[s], kt * BK,
                                       n0 + rank * (BN / CLUSTER), (1 << CLUSTER) - 1);
                }
            }
        }
        cluster_sync();  // no CTA leaves while another may still write into it or arrive on its barriers
        return;
    }

    // consumers: warpgroup 1 takes rows 0-63 of the tile, 2 rows 64-127. A thread holds, for each
    // 8 columns i, the pairs (row, 8i + 2q + {0, 1}) and (row + 8, ...) with q = lane % 4.
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
    int rows_off = (wg - 1) * 64, tid = threadIdx.x % 128, it = 0, tile = 0;
    float acc[2][64];  // the tile's two 128-column halves
    uint8_t *out = out_tiles + (wg - 1) * OUT_BYTES;
    // the tile's scales, in shared memory for the epilogue: a thread loads BN / 128 of each column
    // scale and (the first 64) one of each row scale as the tile starts, stores them once its sums
    // are done
    float *row_scale = scales + (wg - 1) * 2 * (64 + BN), *col_scale = row_scale + 64;
    float *q_row = col_scale + BN, *q_col = q_row + 64;  // the quantizer's (dGELU); q_col: FAST's bias
    for (int u = first; u < units; u += step, tile++) {
        int m0 = (u / tiles_n * CLUSTER + rank) * BM, n0 = u % tiles_n * BN;
        int r = m0 + rows_off + tid, c = n0 + tid;
        float my_row = tid < 64 && r < M ? p.sa[r] : 0.0f, my_col[BN / 128], my_qrow = 0.0f, my_qcol[BN / 128];
        for (int j = 0; j < BN / 128; j++) {
            my_col[j] = c + 128 * j < N ? p.sb[c + 128 * j] : 0.0f;
            my_qcol[j] = DGELU && c + 128 * j < N ? p.col_scale[c + 128 * j]
                       : FAST && p.bias && c + 128 * j < N ? __bfloat162float(p.bias[c + 128 * j]) : 0.0f;
        }
        if (DGELU) my_qrow = tid < 64 && r < M ? p.row_scale[r] : 0.0f;
        #pragma unroll
        for (int h = 0; h < 2; h++)
            #pragma unroll
            for (int i = 0; i < 64; i++) acc[h][i] = 0.0f;
        for (int kt = 0; kt < ktiles; kt++, it++) {
            int s = it % STAGES;
            mbar_wait(&full[s], it / STAGES & 1);
            uint64_t da = smem_desc(sa_tiles + s * BM * BK + rows_off * BK), db = smem_desc(sb_tiles + s * BN * BK);
            if (FAST) {
                // the slice's wgmmas straight into the sums; the previous slice's stage is released
                // once these have been issued and that slice's have completed
                wgmma_fence();
                #pragma unroll
                for (int kk = 0; kk < BK / 32; kk++) wgmma_m64n256k32(acc, da + 2 * kk, db + 2 * kk);
                wgmma_commit();
                wgmma_wait<1>();
                if (kt > 0 && lane == 0)
                    for (int cta = 0; cta < CLUSTER; cta++) mbar_arrive_cluster(&empty[(it - 1) % STAGES], cta);
            } else {
                // a slice's two halves are summed and added in turn, the other warpgroup's wgmmas filling the gaps
                float part[64];
                #pragma unroll
                for (int h = 0; h < 2; h++) {
                    uint64_t dbh = db + h * (128 * BK >> 4);  // B's rows 128h on, in 16-byte units
                    wgmma_fence();
                    wgmma_m64n128k32<false>(part, da, dbh);
                    #pragma unroll
                    for (int kk = 1; kk < BK / 32; kk++) wgmma_m64n128k32<true>(part, da + 2 * kk, dbh + 2 * kk);
                    wgmma_commit();
                    wgmma_wait<0>();
                    #pragma unroll
                    for (int i = 0; i < 64; i++) { reg_fence(part[i]); acc[h][i] += part[i]; }
                }
                if (lane == 0)
                    for (int cta = 0; cta < CLUSTER; cta++) mbar_arrive_cluster(&empty[s], cta);
            }
            // once the last tile's store has read the staging tile, pre's tile comes into it
            if (DGELU && kt == 0 && tid == 0) {
                asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
                mbar_expect_tx(&pre_bar[wg - 1], OUT_BYTES);
                for (int h = 0; h < BN / 64; h++) tma_load(out + h * 64 * 128, &map_pre, &pre_bar[wg - 1], n0 + 64 * h, m0 + rows_off);
            }
        }
        if (FAST) {
            wgmma_wait<0>();
            #pragma unroll
            for (int h = 0; h < 2; h++)
                #pragma unroll
                for (int i = 0; i < 64; i++) reg_fence(acc[h][i]);
            if (lane == 0)
                for (int cta = 0; cta < CLUSTER; cta++) mbar_arrive_cluster(&empty[(it - 1) % STAGES], cta);
        }

        // the epilogue: scaled BF16 into the warpgroup's staging tile, then one thread stores it
        // with TMA while the warpgroup goes on to its next tile
        if (!DGELU && tid == 0) asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");  // the last store has read out
        warpgroup_sync(wg);  // ... and the last epilogue the scales
        if (tid < 64) { row_scale[tid] = my_row; if (DGELU) q_row[tid] = my_qrow; }
        for (int j = 0; j < BN / 128; j++) {
            col_scale[tid + 128 * j] = my_col[j];
            if (DGELU || FAST) q_col[tid + 128 * j] = my_qcol[j];
        }
        warpgroup_sync(wg);
        if (DGELU) mbar_wait(&pre_bar[wg - 1], tile & 1);
        int r0 = warp * 16 + lane / 4;  // and r0 + 8, in the warpgroup's 64 rows
        float s0 = row_scale[r0], s1 = row_scale[r0 + 8], rmax0 = DGELU ? 0.0f : -INFINITY, rmax1 = rmax0;
        #pragma unroll
        for (int i = 0; i < BN / 8; i++) {
            // columns 8i + 2q, 8i + 2q + 1: 64-column half i / 8, 16-byte chunk i % 8, swizzled by the row
            int cc = 8 * i + 2 * (lane % 4);
            float2 w = *(const float2 *)&col_scale[cc];
            uint8_t *half = out + i / 8 * (64 * 128) + 4 * (lane % 4);
            uint32_t *o0 = (uint32_t *)(half + r0 * 128 + (((i % 8) ^ (r0 % 8)) << 4));
            uint32_t *o1 = (uint32_t *)(half + (r0 + 8) * 128 + (((i % 8) ^ (r0 % 8)) << 4));
            // FAST adds the bias in the product's FMA; the others add -0, which leaves every product as it is
            const float *a4 = &acc[i / 16][4 * (i % 16)];
            float2 b = FAST ? *(const float2 *)&q_col[cc] : make_float2(-0.0f, -0.0f);
            float v[4] = { fmaf(a4[0] * s0, w.x, b.x), fmaf(a4[1] * s0, w.y, b.y), fmaf(a4[2] * s1, w.x, b.x), fmaf(a4[3] * s1, w.y, b.y) };
            uint32_t h0, h1;  // rows r0 and r0 + 8's pairs, as stored
            if (DGELU) {
                float2 p0 = bf16x2_floats(*o0), p1 = bf16x2_floats(*o1), qc = *(const float2 *)&q_col[cc];
                float2 g0 = round_bf16x2(v[0], v[1]), g1 = round_bf16x2(v[2], v[3]);
                h0 = bf16x2_bits(g0.x * gelu_grad(p0.x), g0.y * gelu_grad(p0.y));
                h1 = bf16x2_bits(g1.x * gelu_grad(p1.x), g1.y * gelu_grad(p1.y));
                float2 v0 = bf16x2_floats(h0), v1 = bf16x2_floats(h1);
                rmax0 = fmaxf(rmax0, fmaxf(fabsf(v0.x * qc.x), fabsf(v0.y * qc.y)));
                rmax1 = fmaxf(rmax1, fmaxf(fabsf(v1.x * qc.x), fabsf(v1.y * qc.y)));
            } else {
                h0 = bf16x2_bits(v[0], v[1]);
                h1 = bf16x2_bits(v[2], v[3]);
                // the largest before rounding: rounding to BF16 never reverses an order, so the
                // rounded maximum below is the maximum of the stored values. N is a multiple of 8:
                // a pair is in or out whole
                if (FAST && n0 + cc < N) {
                    rmax0 = fmaxf(rmax0, fmaxf(v[0], v[1]));
                    rmax1 = fmaxf(rmax1, fmaxf(v[2], v[3]));
                }
            }
            *o0 = h0;
            *o1 = h1;
        }
        float *row_max = DGELU ? pass1.row_max : p.row_max;
        if ((DGELU || FAST) && row_max) {  // rows: over the 4 lanes of a row, then per row and tile
            for (int o = 1; o <= 2; o <<= 1) {
                rmax0 = fmaxf(rmax0, __shfl_xor_sync(0xffffffffu, rmax0, o));
                rmax1 = fmaxf(rmax1, __shfl_xor_sync(0xffffffffu, rmax1, o));
            }
            if (FAST) { float2 r = round_bf16x2(rmax0, rmax1); rmax0 = r.x; rmax1 = r.y; }
            int ra = m0 + rows_off + r0, ti = n0 / BN;
            if (lane % 4 == 0 && ra < M) row_max[(size_t)ra * tiles_n + ti] = rmax0;
            if (lane % 4 == 0 && ra + 8 < M) row_max[(size_t)(ra + 8) * tiles_n + ti] = rmax1;
        }
        if (DGELU) {
            // columns: a thread takes 2 of them down the staging tile's 64 rows (warp w reads half
            // w: one 128-byte row a load, no bank conflicts), in row order. The swizzle repeats every
            // 8 rows: 8 addresses, then every load an immediate offset from one of them.
            warpgroup_sync(wg);
            int cw = 2 * lane;  // in half `warp`
            float cmax0 = 0.0f, cmax1 = 0.0f, csum0 = 0.0f, csum1 = 0.0f;
            const uint8_t *half = out + warp * (64 * 128) + 4 * (lane % 4), *chunk[8];
            for (int j = 0; j < 8; j++) chunk[j] = half + (((lane / 4) ^ j) << 4);
            #pragma unroll
            for (int rr = 0; rr < 64; rr += 4) {
                float4 q4 = *(const float4 *)&q_row[rr];
                float qr[4] = { q4.x, q4.y, q4.z, q4.w };
                #pragma unroll
                for (int j = 0; j < 4; j++) {
                    float2 x = bf16x2_floats(*(const uint32_t *)(chunk[(rr + j) % 8] + (rr + j) * 128));
                    cmax0 = fmaxf(cmax0, fabsf(x.x * qr[j])); cmax1 = fmaxf(cmax1, fabsf(x.y * qr[j]));
                    csum0 += x.x; csum1 += x.y;
                }
            }
            int col = n0 + 64 * warp + cw;
            if (col < N && m0 + rows_off < M) {
                size_t at = (size_t)((m0 + rows_off) / GEMM_PART_ROWS) * N + col;
                *(float2 *)(pass1.col_max + at) = make_float2(cmax0, cmax1);
                *(float2 *)(pass1.col_sum + at) = make_float2(csum0, csum1);
            }
        }
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");  // the writes, visible to TMA
        warpgroup_sync(wg);
        if (tid == 0) {
            for (int h = 0; h < BN / 64; h++) tma_store(&map_d, out + h * 64 * 128, n0 + 64 * h, m0 + rows_off);
            asm volatile("cp.async.bulk.commit_group;" ::: "memory");
        }
    }
    if (tid == 0) asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
    cluster_sync();
#else
    if (threadIdx.x == 0 && blockIdx.x == 0) printf("fp8_gemm_kernel: this binary was not built for sm_90a\n");
    __trap();
#endif
}

// ---------------------------------------------------------------------------------------------
// host side

// whether this GPU runs the kernel (Hopper: sm_90, for which the Makefile builds sm_90a)
static int fp8_gemm_supported(void) {
    int dev, major, minor;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
    return major == 9 && minor == 0;
}

// the TMA map of a row-major (rows, cols) matrix of 1- or 2-byte elements, in boxes of box_rows x
// box_cols, 128-byte swizzled (box_cols x the element size must be 128 bytes)
static CUtensorMap tensor_map(const void *p, int elem_bytes, int rows, int cols, int box_rows, int box_cols) {
    static PFN_cuTensorMapEncodeTiled_v12000 encode_tiled;
    if (!encode_tiled) {
        cudaDriverEntryPointQueryResult q;
        CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", (void **)&encode_tiled, 12000, cudaEnableDefault, &q));
        if (q != cudaDriverEntryPointSuccess) die("the driver has no cuTensorMapEncodeTiled");
    }
    CUtensorMap map;
    cuuint64_t dims[2] = { (cuuint64_t)cols, (cuuint64_t)rows }, strides[1] = { (cuuint64_t)cols * elem_bytes };
    cuuint32_t box[2] = { (cuuint32_t)box_cols, (cuuint32_t)box_rows }, elem[2] = { 1, 1 };
    CUresult r = encode_tiled(&map, elem_bytes == 1 ? CU_TENSOR_MAP_DATA_TYPE_UINT8 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, (void *)p, dims,
                              strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                              CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) die("cuTensorMapEncodeTiled failed (%d) for %d x %d", (int)r, rows, cols);
    return map;
}

// d = the product of p; with pre, d = its dGELU and the first pass of d's quantization (above).
// a (M, K), b (N, K), d and pre (M, N), all 16-byte aligned.
static void fp8_gemm(bf16 *d, const void *a, const void *b, const bf16 *pre, const GemmFp8 *p, cudaStream_t stream) {
    int M = p->M, N = p->N, K = p->K;
    if (M < 1 || K % 16 != 0 || N % 8 != 0) die("fp8_gemm %d x %d x %d: K must be a multiple of 16 and N of 8", M, N, K);
    if (pre && !(p->row_scale && p->col_scale && p->part)) die("fp8_gemm: dGELU needs its quantizer's scales and buffer");
    CUtensorMap ma = tensor_map(a, 1, M, K, BM, BK), mb = tensor_map(b, 1, N, K, BN / CLUSTER, BK), md = tensor_map(d, 2, M, N, 64, 64);
    CUtensorMap mp = pre ? tensor_map(pre, 2, M, N, 64, 64) : md;
    if (pre && p->fast) die("fp8_gemm: the dGELU epilogue's sums are promoted (E4M3 gradients)");
    if ((p->bias || p->row_max) && !p->fast) die("fp8_gemm: bias and row maxima come with fast sums");
    void (*kernel)(const CUtensorMap, const CUtensorMap, const CUtensorMap, const CUtensorMap, GemmFp8) =
        pre ? fp8_gemm_kernel<true, false> : p->fast ? fp8_gemm_kernel<false, true> : fp8_gemm_kernel<false, false>;
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = CLUSTER; attr.val.clusterDim.y = 1; attr.val.clusterDim.z = 1;
    cfg.blockDim = dim3(GEMM_THREADS);
    cfg.dynamicSmemBytes = GEMM_SMEM_BYTES;
    cfg.stream = stream;
    cfg.attrs = &attr;
    cfg.numAttrs = 1;
    static int max_clusters;  // as many clusters as fit on the GPU at once (the same for both kernels)
    if (!max_clusters) {
        int dev, sms;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
        CUDA_CHECK(cudaFuncSetAttribute(fp8_gemm_kernel<false, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)GEMM_SMEM_BYTES));
        CUDA_CHECK(cudaFuncSetAttribute(fp8_gemm_kernel<false, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)GEMM_SMEM_BYTES));
        CUDA_CHECK(cudaFuncSetAttribute(fp8_gemm_kernel<true, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)GEMM_SMEM_BYTES));
        cfg.gridDim = dim3(sms / CLUSTER * CLUSTER);
        CUDA_CHECK(cudaOccupancyMaxActiveClusters(&max_clusters, fp8_gemm_kernel<true, false>, &cfg));
        if (max_clusters == 0) die("fp8_gemm: no cluster of %d CTAs fits", CLUSTER);
    }
    int units = ceil_div(ceil_div(M, BM), CLUSTER) * ceil_div(N, BN);
    cfg.gridDim = dim3((units < max_clusters ? units : max_clusters) * CLUSTER);
    CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, ma, mb, md, mp, *p));
}

#undef BM
#undef BN
#undef BK
#undef STAGES
#undef OUT_BYTES
#undef CLUSTER

#endif
