// defines: matmul_init, lt_side_stream, GemmKey, lt_matmul, gemm_key, matmul_forward, matmul_dgrad,
//          matmul_wgrad, matmul_fp8, column_sum
// The GEMMs of a linear layer through cuBLASLt (BF16 operands, FP32 accumulation), for row-major
// tensors: y = x W^T (+ b) (+ residual) (GELU fused), dx = dy W (dGELU fused), dW (+)= dy^T x; and
// the deterministic column sums the bias gradients need.
#ifndef LLMC_MATMUL_CUH
#define LLMC_MATMUL_CUH

#include "cuda_common.cuh"

static cublasLtHandle_t lt_handle;
static void *lt_workspace, *lt_side_workspace;
static const size_t LT_WORKSPACE = 32 << 20;
// A stream for GEMMs that run beside the main work (the trainer's weight gradients). GEMMs in
// flight at the same time need workspaces of their own: GEMMs on this stream take the second one.
// Both streams at the same priority: giving either one precedence measured no better (dev/NOTES.md).
static cudaStream_t lt_side_stream;

static void matmul_init(void) {
    CUBLAS_CHECK(cublasLtCreate(&lt_handle));
    lt_workspace = cuda_malloc(LT_WORKSPACE);
    lt_side_workspace = cuda_malloc(LT_WORKSPACE);
    CUDA_CHECK(cudaStreamCreateWithFlags(&lt_side_stream, cudaStreamNonBlocking));
}

// What selects a cuBLASLt plan: shape, transposes, types, epilogue, scaling. Column-major
// D (m, n) = op(A) (m, k) op(B) (k, n) [+ beta C], then the epilogue.
typedef struct {
    int m, n, k, trans_a, trans_b;
    cudaDataType a_type, b_type, d_type;
    int has_c;                    // C is a BF16 matrix like D (the residual), else C = D
    cublasLtEpilogue_t epilogue;  // DEFAULT, BIAS, GELU_AUX(_BIAS), DGELU
    int outer_vec;                // FP32 scale vectors on A (over m) and B (over n)
    int fast_accum;               // FP8: the tensor cores' own sum over all of k, no FP32 promotion
} GemmKey;

// One cached plan per key: the descriptors and the heuristic's algorithm are made once, not
// per call (a training step runs ~10 GEMMs per layer).
typedef struct {
    GemmKey key;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc, ld;
    cublasLtMatmulAlgo_t algo;
} LtPlan;

#define MAX_LT_PLANS 256  // a process may build models of several shapes (the tests do)
static LtPlan lt_plans[MAX_LT_PLANS];
static int lt_nplans;

static void lt_set(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr, const void *v, size_t size) {
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, attr, v, size));
}

// a_scale, b_scale: cuBLASLt offers OUTER_VEC kernels only when the scale pointers are set at the
// heuristic query (dev/NOTES.md), so the first call's pointers go into the plan's descriptor
static LtPlan *lt_plan(const GemmKey *key, const float *a_scale, const float *b_scale) {
    for (int i = 0; i < lt_nplans; i++) if (memcmp(&lt_plans[i].key, key, sizeof(*key)) == 0) return &lt_plans[i];
    if (lt_nplans == MAX_LT_PLANS) die("more than %d GEMM plans", MAX_LT_PLANS);
    LtPlan *p = &lt_plans[lt_nplans++];
    p->key = *key;
    int m = key->m, n = key->n, k = key->k, ta = key->trans_a, tb = key->trans_b;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    lt_set(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa));
    lt_set(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb));
    lt_set(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &key->epilogue, sizeof(key->epilogue));
    cudaDataType bf = CUDA_R_16BF;
    if (key->epilogue != CUBLASLT_EPILOGUE_DEFAULT) lt_set(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bf, sizeof(bf));
    if (key->epilogue == CUBLASLT_EPILOGUE_GELU_AUX || key->epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS ||
        key->epilogue == CUBLASLT_EPILOGUE_DGELU) {
        int64_t ld = m;
        lt_set(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof(ld));
        lt_set(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE, &bf, sizeof(bf));
    }
    if (key->outer_vec) {
        cublasLtMatmulMatrixScale_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
        lt_set(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof(mode));
        lt_set(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof(mode));
        lt_set(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a_scale, sizeof(a_scale));
        lt_set(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b_scale, sizeof(b_scale));
    }
    if (key->fast_accum) { int8_t on = 1; lt_set(p->desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &on, sizeof(on)); }
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->la, key->a_type, ta ? k : m, ta ? m : k, ta ? k : m));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lb, key->b_type, tb ? n : k, tb ? k : n, tb ? n : k));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lc, key->has_c ? CUDA_R_16BF : key->d_type, m, n, m));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->ld, key->d_type, m, n, m));
    cublasLtMatmulPreference_t pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &LT_WORKSPACE, sizeof(LT_WORKSPACE)));
    // split-K partial sums in FP32 only: reduced in the output's type (BF16) or in place, they
    // would round once per split
    uint32_t reduction = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &reduction, sizeof(reduction)));
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt_handle, p->desc, p->la, p->lb, p->lc, p->ld, pref, 1, &heur, &found);
    if (st != CUBLAS_STATUS_SUCCESS || found == 0)
        die("cuBLASLt has no kernel for m=%d n=%d k=%d ta=%d tb=%d types %d,%d->%d epilogue %d outer_vec %d (status %d)", m, n, k,
            ta, tb, (int)key->a_type, (int)key->b_type, (int)key->d_type, (int)key->epilogue, key->outer_vec, (int)st);
    p->algo = heur.algo;
    cublasLtMatmulPreferenceDestroy(pref);
    return p;
}

// runs the plan of key: c may be NULL (beta applies to D itself); bias (m), aux (m, n) and the
// scale vectors (a_scale m, b_scale n) as the key's epilogue and scaling ask
static void lt_matmul(const GemmKey *key, void *d, const void *a, const void *b, const void *c, float beta, const void *bias,
                      void *aux, const float *a_scale, const float *b_scale, cudaStream_t stream) {
    LtPlan *p = lt_plan(key, a_scale, b_scale);
    if (bias) lt_set(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias));
    if (aux) lt_set(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux));
    if (key->outer_vec) {
        lt_set(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a_scale, sizeof(a_scale));
        lt_set(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b_scale, sizeof(b_scale));
    }
    float alpha = 1.0f;
    CUBLAS_CHECK(cublasLtMatmul(lt_handle, p->desc, &alpha, a, p->la, b, p->lb, &beta, c ? c : d, p->lc, d, p->ld, &p->algo,
                                stream == lt_side_stream ? lt_side_workspace : lt_workspace, LT_WORKSPACE, stream));
}

static GemmKey gemm_key(int m, int n, int k, int trans_a, int trans_b, cudaDataType ab_type, cudaDataType d_type) {
    GemmKey key;
    memset(&key, 0, sizeof(key));  // the key is compared bytewise, padding included
    key.m = m; key.n = n; key.k = k; key.trans_a = trans_a; key.trans_b = trans_b;
    key.a_type = key.b_type = ab_type; key.d_type = d_type;
    key.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    return key;
}

// y (N, M) = x (N, K) W (M, K)^T + bias (M) + residual (N, M); bias, residual may be NULL.
// With pre != NULL: pre = x W^T + bias and y = gelu(pre) (tanh form), in the GEMM's epilogue.
static void matmul_forward(bf16 *y, const bf16 *x, const bf16 *W, const bf16 *bias, const bf16 *residual, bf16 *pre,
                           int N, int K, int M, cudaStream_t stream) {
    GemmKey key = gemm_key(M, N, K, 1, 0, CUDA_R_16BF, CUDA_R_16BF);
    key.has_c = residual != NULL;
    key.epilogue = pre ? (bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX)
                       : (bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT);
    lt_matmul(&key, y, W, x, residual, residual ? 1.0f : 0.0f, bias, pre, NULL, NULL, stream);
}

// dx (N, K) = dy (N, M) W (M, K); with pre != NULL (N, K), times gelu'(pre) in the epilogue
static void matmul_dgrad(bf16 *dx, const bf16 *dy, const bf16 *W, const bf16 *pre, int N, int M, int K, cudaStream_t stream) {
    GemmKey key = gemm_key(K, N, M, 0, 0, CUDA_R_16BF, CUDA_R_16BF);
    key.epilogue = pre ? CUBLASLT_EPILOGUE_DGELU : CUBLASLT_EPILOGUE_DEFAULT;
    lt_matmul(&key, dx, W, dy, NULL, 0.0f, NULL, (void *)pre, NULL, NULL, stream);
}

// dW (M, K) = beta dW + dy (N, M)^T x (N, K), FP32 accumulator (beta 1: accumulate, 0: overwrite)
static void matmul_wgrad(float *dW, const bf16 *dy, const bf16 *x, int N, int M, int K, float beta, cudaStream_t stream) {
    GemmKey key = gemm_key(K, M, N, 0, 1, CUDA_R_16BF, CUDA_R_32F);
    lt_matmul(&key, dW, x, dy, NULL, beta, NULL, NULL, NULL, NULL, stream);
}

// TN FP8 GEMM with FP32 scale vectors (cuBLASLt OUTER_VEC_32F, SPEC.md 4): column-major
// D (m, n) = sa[i] sb[j] sum_k A[k, i] B[k, j] (+ beta C), then the epilogue; A and B are FP8
// bytes contiguous along k (row-major (m, k) and (n, k)), k a multiple of 16 (Hopper's rule).
// The tensor cores sum FP8 products with fewer bits than FP32; cuBLASLt adds each 128-wide slice
// of k into FP32 ("promotes"), or with fast_accum keeps the whole sum in the tensor cores:
// 1.05-1.25x faster on the trainer's forward shapes. On random E2M1 codes it gave the same bits
// (their products are multiples of 1/4, the sums short); on E4M3 codes up to 1.8x the error bound
// of test_kernels_gpu's forward at k = 3072 (dev/NOTES.md, session 29).
static void matmul_fp8(void *d, cudaDataType d_type, const void *a, cudaDataType a_type, const float *sa, const void *b,
                       cudaDataType b_type, const float *sb, int m, int n, int k, const bf16 *c, float beta, const bf16 *bias,
                       const bf16 *aux, cublasLtEpilogue_t epilogue, int fast_accum, cudaStream_t stream) {
    if (k % 16 != 0 || m % 8 != 0) die("FP8 GEMM %d x %d x %d: k must be a multiple of 16 and m of 8", m, n, k);
    GemmKey key = gemm_key(m, n, k, 1, 0, a_type, d_type);
    key.b_type = b_type; key.has_c = c != NULL; key.epilogue = epilogue; key.outer_vec = 1; key.fast_accum = fast_accum;
    lt_matmul(&key, d, a, b, c, beta, bias, (void *)aux, sa, sb, stream);
}

// ---------------------------------------------------------------------------------------------
// out (C) += column sums of a row-major (N, C) BF16 matrix, deterministically: partial sums over
// chunks of 64 rows, then over the chunks (sum_rows); scratch holds ceil(N / 64) * C floats

#define COLSUM_ROWS 64

__global__ void column_partial_kernel(float *partial, const bf16 *a, int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    int n0 = blockIdx.y * COLSUM_ROWS, n1 = min(n0 + COLSUM_ROWS, N);
    float s = 0.0f;
    for (int n = n0; n < n1; n++) s += __bfloat162float(a[(size_t)n * C + c]);
    partial[(size_t)blockIdx.y * C + c] = s;
}

static void column_sum(float *out, const bf16 *a, float *scratch, int N, int C, cudaStream_t stream) {
    int chunks = ceil_div(N, COLSUM_ROWS);
    column_partial_kernel<<<dim3(ceil_div(C, 128), chunks), 128, 0, stream>>>(scratch, a, N, C);
    CUDA_CHECK(cudaGetLastError());
    sum_rows(out, scratch, chunks, C, C, stream);
}

#endif
