// An FP8 GEMM of our own for Hopper (TMA loads, wgmma), the first step of issue 4's plan to
// quantize inside the GEMMs' epilogues: cuBLASLt's epilogues cannot take a row's absmax, so the
// fused quantizers need a GEMM whose epilogue is ours. This study checks the kernel against an
// FP64 reference on random codes and times it beside cuBLASLt's OUTER_VEC_32F GEMM (the one the
// trainer runs) on the trainer's shapes, in the same run.
//
//   D (M, N) row-major BF16 = sa[m] sb[n] sum_k A[m, k] B[n, k]
//   A (M, K), B (N, K): FP8 E4M3 bytes, contiguous along k (TN); sa (M), sb (N): FP32 scales
//
// Layout of the work: a persistent CTA per SM walks output tiles of BM x BN. Warpgroup 0 is the
// producer: one thread issues TMA loads of A's and B's 128-byte k-slices into a ring of STAGES
// buffers (128-byte swizzle, the layout wgmma reads without bank conflicts). The CTAs of a
// cluster of CLUSTER take vertically adjacent tiles, so each loads 1 / CLUSTER of B's slice and
// multicasts it to all (less L2 traffic a FLOP). Warpgroups 1 and 2 each multiply 64 rows of the
// tile with m64n128k32 wgmmas. Each 128-wide k-slice is summed by the tensor cores into a fresh
// accumulator, then added in FP32 on the CUDA cores: Hopper's FP8 accumulation keeps fewer bits
// than FP32 (a whole k of 32768 drifts by more than BF16's rounding), and cuBLASLt promotes the
// same way unless told to accumulate fast. The epilogue scales the sums into a swizzled BF16 tile
// in shared memory, and one thread stores it with TMA while the warpgroup starts its next tile.
//
// What bounds it is shared memory's bandwidth (128 bytes a clock an SM): a k-slice writes
// (BM + BN) x 128 bytes and the wgmmas read each warpgroup's A and all of B. At BN = 128 that is
// ~156 bytes for every 4096 MACs the tensor cores do in a clock; at BN = 256, ~125 to ~141.
// -DBN=128 -DSTAGES=5, -DCLUSTER=1, -DMULTICAST=0 build the variants (times in dev/NOTES.md).
//   make dev/cuda/fp8_gemm && ./dev/cuda/fp8_gemm
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_fp8.h>
#include <algorithm>
#include "../../llmc/matmul.cuh"

typedef __nv_fp8_storage_t fp8;

#define BM 128
#ifndef BN
#define BN 256      // or 128 (with STAGES 5): two partial sums in flight, more shared-memory bytes a FLOP
#endif
#define BK 128      // k per stage: one 128-byte swizzle row of FP8
#ifndef STAGES
#define STAGES 3    // as many as fit beside the output tiles
#endif
#define THREADS 384 // warpgroup 0 loads, 1 and 2 multiply
#ifndef CLUSTER
#define CLUSTER 2   // CTAs of a cluster take vertically adjacent tiles and share B's loads
#endif
#ifndef MULTICAST
#define MULTICAST 1
#endif
#define OUT_BYTES (64 * BN * 2)  // a consumer warpgroup's BF16 output tile, staged for its TMA store

// the tiles' ring, each consumer warpgroup's output tile, then its tile's 64 row scales and BN
// column scales, then the barriers
static const size_t SMEM_BYTES =
    STAGES * (BM + BN) * BK + 2 * OUT_BYTES + 2 * (64 + BN) * sizeof(float) + 2 * STAGES * sizeof(uint64_t) + 1024;

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
// a box of the tensor map at (c0 along k, c1 along rows) into shared memory, counted on bar
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

// ---------------------------------------------------------------------------------------------

__global__ void __launch_bounds__(THREADS, 1)
fp8_gemm_kernel(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                const __grid_constant__ CUtensorMap map_d, const float *sa, const float *sb, int M, int N, int K) {
    extern __shared__ uint8_t smem_raw[];
    // the swizzle pattern repeats every 1024 bytes: buffers start on such a boundary
    uint8_t *smem = (uint8_t *)(((uintptr_t)smem_raw + 1023) & ~(uintptr_t)1023);
    uint8_t *sa_tiles = smem;                            // [STAGES][BM][BK]
    uint8_t *sb_tiles = smem + STAGES * BM * BK;         // [STAGES][BN][BK]
    uint8_t *out_tiles = sb_tiles + STAGES * BN * BK;           // [2][BN / 64][64 rows][128 bytes], swizzled
    float *scales = (float *)(out_tiles + 2 * OUT_BYTES);       // [2][64 + BN]
    uint64_t *full = (uint64_t *)(scales + 2 * (64 + BN)), *empty = full + STAGES;
    int wg = threadIdx.x / 128, warp = threadIdx.x / 32 % 4, lane = threadIdx.x % 32;
    // a stage is free once the consumers of every CTA in the cluster are done with it, since each
    // CTA's producer writes its part of B into all of them
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) { mbar_init(&full[s], 1); mbar_init(&empty[s], 8 * CLUSTER); }  // consumer warps
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    cluster_sync();
    // the cluster walks units of CLUSTER vertically adjacent tiles; this CTA takes the rank-th
    int rank = cluster_rank(), tiles_n = (N + BN - 1) / BN, ktiles = (K + BK - 1) / BK;
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
                    if (MULTICAST)
                        tma_load_multicast(sb_tiles + (s * BN + rank * (BN / CLUSTER)) * BK, &map_b, &full[s], kt * BK,
                                           n0 + rank * (BN / CLUSTER), (1 << CLUSTER) - 1);
                    else tma_load(sb_tiles + s * BN * BK, &map_b, &full[s], kt * BK, n0);
                }
            }
        }
        cluster_sync();  // no CTA leaves while another may still write into it or arrive on its barriers
        return;
    }

    // consumers: warpgroup 1 takes rows 0-63 of the tile, 2 rows 64-127. A thread holds, for each
    // 8 columns i, the pairs (row, 8i + 2q + {0, 1}) and (row + 8, ...) with q = lane % 4.
    int rows_off = (wg - 1) * 64;
    float acc[BN / 2], part0[64];
    int it = 0;  // k-slices begun, over all tiles
#if BN == 128
    float part1[64];
    // the next k-slice (stage it) into p: its wgmmas go in flight as one group
    auto issue = [&](float (&p)[64]) {
        int s = it % STAGES;
        mbar_wait(&full[s], it / STAGES & 1);
        uint64_t da = smem_desc(sa_tiles + s * BM * BK + rows_off * BK), db = smem_desc(sb_tiles + s * BN * BK);
        wgmma_fence();
        wgmma_m64n128k32<false>(p, da, db);
        #pragma unroll
        for (int kk = 1; kk < BK / 32; kk++)  // 32 bytes of k further along the swizzled rows
            wgmma_m64n128k32<true>(p, da + 2 * kk, db + 2 * kk);
        wgmma_commit();
        it++;
    };
    // once at most `pending` groups are in flight: the slice before them is done, its stage is
    // given back and its sum p is added to acc
    auto retire = [&](float (&p)[64], int kt, int pending) {
        if (pending) wgmma_wait<1>();
        else wgmma_wait<0>();
        if (lane == 0)
            for (int c = 0; c < CLUSTER; c++) mbar_arrive_cluster(&empty[(it - 1 - pending) % STAGES], c);
        #pragma unroll
        for (int i = 0; i < 64; i++) { reg_fence(p[i]); acc[i] = kt > 0 ? acc[i] + p[i] : p[i]; }
    };
#endif
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
    // the tile's scales, in shared memory for the epilogue: a consumer thread loads BN / 128 column
    // scales and (the first 64) one row scale as the tile starts, stores them once its sums are done
    float *row_scale = scales + (wg - 1) * (64 + BN), *col_scale = row_scale + 64;
    int tid = threadIdx.x % 128;
    for (int u = first; u < units; u += step) {
        int m0 = (u / tiles_n * CLUSTER + rank) * BM, n0 = u % tiles_n * BN;
        int r = m0 + rows_off + tid, c = n0 + tid;
        float my_row = tid < 64 && r < M ? sa[r] : 0.0f, my_col[BN / 128];
        for (int j = 0; j < BN / 128; j++) my_col[j] = c + 128 * j < N ? sb[c + 128 * j] : 0.0f;
#if BN == 128
        // two slices in flight: while the tensor cores sum one, the other is added
        for (int kt = 0; kt < ktiles; kt += 2) {
            issue(part0);
            if (kt > 0) retire(part1, kt - 1, 1);
            if (kt + 1 < ktiles) { issue(part1); retire(part0, kt, 1); }
        }
        if (ktiles % 2) retire(part0, ktiles - 1, 0);
        else retire(part1, ktiles - 1, 0);
#else
        // a 64 x 256 sum leaves registers for one 64 x 128 partial sum: a slice's two halves are
        // summed and added in turn, the other warpgroup's wgmmas filling the gaps
        for (int kt = 0; kt < ktiles; kt++, it++) {
            int s = it % STAGES;
            mbar_wait(&full[s], it / STAGES & 1);
            uint64_t da = smem_desc(sa_tiles + s * BM * BK + rows_off * BK), db = smem_desc(sb_tiles + s * BN * BK);
            #pragma unroll
            for (int h = 0; h < 2; h++) {
                uint64_t dbh = db + h * (128 * BK >> 4);  // B's rows 128h on, in 16-byte units
                wgmma_fence();
                wgmma_m64n128k32<false>(part0, da, dbh);
                #pragma unroll
                for (int kk = 1; kk < BK / 32; kk++) wgmma_m64n128k32<true>(part0, da + 2 * kk, dbh + 2 * kk);
                wgmma_commit();
                wgmma_wait<0>();
                #pragma unroll
                for (int i = 0; i < 64; i++) { reg_fence(part0[i]); acc[64 * h + i] = kt > 0 ? acc[64 * h + i] + part0[i] : part0[i]; }
            }
            if (lane == 0)
                for (int c = 0; c < CLUSTER; c++) mbar_arrive_cluster(&empty[s], c);
        }
#endif

        // the epilogue: scaled BF16 into the warpgroup's staging tile, then one thread stores it
        // with TMA while the warpgroup goes on to its next tile
        uint8_t *out = out_tiles + (wg - 1) * OUT_BYTES;
        if (tid == 0) asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");  // the last store has read out
        asm volatile("bar.sync %0, 128;" ::"r"(wg));  // ... and the last epilogue the scales
        if (tid < 64) row_scale[tid] = my_row;
        for (int j = 0; j < BN / 128; j++) col_scale[tid + 128 * j] = my_col[j];
        asm volatile("bar.sync %0, 128;" ::"r"(wg));
        int r0 = warp * 16 + lane / 4;  // and r0 + 8, in the warpgroup's 64 rows
        float s0 = row_scale[r0], s1 = row_scale[r0 + 8];
        #pragma unroll
        for (int i = 0; i < BN / 8; i++) {
            // columns 8i + 2q, 8i + 2q + 1: 64-column half i / 8, 16-byte chunk i % 8, swizzled by the row
            float2 w = *(const float2 *)&col_scale[8 * i + 2 * (lane % 4)];
            uint8_t *half = out + i / 8 * (64 * 128) + 4 * (lane % 4);
            *(__nv_bfloat162 *)(half + r0 * 128 + (((i % 8) ^ (r0 % 8)) << 4)) =
                __floats2bfloat162_rn(acc[4 * i] * s0 * w.x, acc[4 * i + 1] * s0 * w.y);
            *(__nv_bfloat162 *)(half + (r0 + 8) * 128 + (((i % 8) ^ (r0 % 8)) << 4)) =
                __floats2bfloat162_rn(acc[4 * i + 2] * s1 * w.x, acc[4 * i + 3] * s1 * w.y);
        }
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");  // the writes, visible to TMA
        asm volatile("bar.sync %0, 128;" ::"r"(wg));
        if (tid == 0) {
            for (int h = 0; h < BN / 64; h++) tma_store(&map_d, out + h * 64 * 128, n0 + 64 * h, m0 + rows_off);
            asm volatile("cp.async.bulk.commit_group;" ::: "memory");
        }
    }
    if (tid == 0) asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
    cluster_sync();
}

// ---------------------------------------------------------------------------------------------
// host side

static PFN_cuTensorMapEncodeTiled_v12000 encode_tiled;

// the TMA map of a row-major (rows, cols) matrix of 1- or 2-byte elements, in boxes of box_rows x
// box_cols, 128-byte swizzled (box_cols x the element size must be 128 bytes)
static CUtensorMap tensor_map(const void *p, int elem_bytes, int rows, int cols, int box_rows, int box_cols) {
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

static int num_sms;

static void fp8_gemm(bf16 *d, const fp8 *a, const float *sa, const fp8 *b, const float *sb, int M, int N, int K, cudaStream_t stream) {
    if (K % 16 != 0 || N % 8 != 0) die("fp8_gemm %d x %d x %d: K must be a multiple of 16 and N of 8", M, N, K);
    CUtensorMap ma = tensor_map(a, 1, M, K, BM, BK), mb = tensor_map(b, 1, N, K, MULTICAST ? BN / CLUSTER : BN, BK), md = tensor_map(d, 2, M, N, 64, 64);
    int units = ceil_div(ceil_div(M, BM), CLUSTER) * ceil_div(N, BN);
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = CLUSTER; attr.val.clusterDim.y = 1; attr.val.clusterDim.z = 1;
    cfg.blockDim = dim3(THREADS);
    cfg.dynamicSmemBytes = SMEM_BYTES;
    cfg.stream = stream;
    cfg.attrs = &attr;
    cfg.numAttrs = 1;
    static int max_clusters;  // as many clusters as fit on the GPU at once
    if (!max_clusters) {
        cfg.gridDim = dim3(num_sms / CLUSTER * CLUSTER);
        CUDA_CHECK(cudaOccupancyMaxActiveClusters(&max_clusters, fp8_gemm_kernel, &cfg));
        if (max_clusters == 0) die("fp8_gemm: no cluster of %d CTAs fits", CLUSTER);
        printf("fp8_gemm: %d clusters of %d CTAs at once\n", max_clusters, CLUSTER);
    }
    cfg.gridDim = dim3((units < max_clusters ? units : max_clusters) * CLUSTER);
    CUDA_CHECK(cudaLaunchKernelEx(&cfg, fp8_gemm_kernel, ma, mb, md, sa, sb, M, N, K));
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
static int check(int M, int N, int K, int fp4) {
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
               CUBLASLT_EPILOGUE_DEFAULT, 0);
    CUDA_CHECK(cudaMemset(dd, 0xFF, (size_t)M * N * 2));  // NaNs where nothing is written
    fp8_gemm(dd, da, dsa, db, dsb, M, N, K, 0);
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
    printf("check %5d x %5d x %5d %s: worst error %7.3f of the bound (cuBLASLt %7.3f)%s\n", M, N, K, fp4 ? "fp4 codes" : "e4m3     ",
           worst, lt_worst, pass ? "" : " FAIL");
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
    CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, 0));
    printf("fp8_gemm: %d SMs, %zu bytes of shared memory a CTA\n", num_sms, SMEM_BYTES);
    CUDA_CHECK(cudaFuncSetAttribute(fp8_gemm_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)SMEM_BYTES));
    matmul_init();
    // correctness: whole tiles, ragged edges in every dimension, a long k
    const int shapes[][3] = { { 128, 128, 128 }, { 300, 200, 208 }, { 1000, 392, 784 }, { 512, 768, 3072 }, { 256, 256, 32768 } };
    int ok = 1;
    for (int s = 0; s < 5; s++)
        for (int fp4 = 1; fp4 >= 0; fp4--)
            ok &= check(shapes[s][0], shapes[s][1], shapes[s][2], fp4);

    // speed: the trainer's forward and dgrad GEMMs, GPT-2 124M at B = 32 and LLaMA 928M at B = 8
    struct { const char *name; int M, N, K; } bench[] = {
        { "gpt2 qkv fwd", 32768, 2304, 768 },    { "gpt2 attproj fwd", 32768, 768, 768 }, { "gpt2 fc fwd", 32768, 3072, 768 },
        { "gpt2 fcproj fwd", 32768, 768, 3072 }, { "gpt2 qkv dgrad", 32768, 768, 2304 },  { "gpt2 fc dgrad", 32768, 768, 3072 },
        { "gpt2 fcproj dgrad", 32768, 3072, 768 }, { "llama qkv fwd", 8192, 6144, 2048 }, { "llama fc13 fwd", 8192, 11264, 2048 },
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
    printf("\n| GEMM | M x N x K | cuBLASLt ms (TFLOPS) | ours ms (TFLOPS) | ours / cuBLASLt |\n|---|---|---|---|---|\n");
    for (auto &g : bench) {
        double flop = 2.0 * g.M * g.N * g.K;
        // cuBLASLt's column-major D (N, M) is our row-major D (M, N)
        float lt = time_ms([&] { matmul_fp8(d, CUDA_R_16BF, b, CUDA_R_8F_E4M3, sb, a, CUDA_R_8F_E4M3, sa, g.N, g.M, g.K, NULL, 0.0f,
                                            NULL, NULL, CUBLASLT_EPILOGUE_DEFAULT, 0); }, 20);
        float ours = time_ms([&] { fp8_gemm(d, a, sa, b, sb, g.M, g.N, g.K, 0); }, 20);
        printf("| %s | %d x %d x %d | %.3f (%.0f) | %.3f (%.0f) | %.2fx |\n", g.name, g.M, g.N, g.K, lt, flop / lt / 1e9, ours,
               flop / ours / 1e9, lt / ours);
    }
    printf("\n%s\n", ok ? "all checks passed" : "CHECKS FAILED");
    return ok ? 0 : 1;
}
