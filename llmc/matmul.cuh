// defines: matmul_init, matmul_forward, matmul_dgrad, matmul_wgrad, column_sum
// The GEMMs of a linear layer through cuBLASLt (BF16 operands, FP32 accumulation), for row-major
// tensors: y = x W^T (+ b) (+ residual), dx = dy W, dW += dy^T x; and the deterministic column
// sums the bias and norm gradients need.
#ifndef LLMC_MATMUL_CUH
#define LLMC_MATMUL_CUH

#include "cuda_common.cuh"

static cublasLtHandle_t lt_handle;
static void *lt_workspace;
static const size_t LT_WORKSPACE = 32 << 20;

static void matmul_init(void) {
    CUBLAS_CHECK(cublasLtCreate(&lt_handle));
    lt_workspace = cuda_malloc(LT_WORKSPACE);
}

// One cached plan per GEMM shape: the descriptors and the heuristic's algorithm are made once,
// not per call (a training step runs ~10 GEMMs per layer).
typedef struct {
    int m, n, k, trans_a, trans_b, has_bias, has_c;
    cudaDataType dtype;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc, ld;
    cublasLtMatmulAlgo_t algo;
} LtPlan;

#define MAX_LT_PLANS 64
static LtPlan lt_plans[MAX_LT_PLANS];
static int lt_nplans;

static LtPlan *lt_plan(cudaDataType dtype, int m, int n, int k, int trans_a, int trans_b, int has_bias, int has_c) {
    for (int i = 0; i < lt_nplans; i++) {
        LtPlan *p = &lt_plans[i];
        if (p->m == m && p->n == n && p->k == k && p->trans_a == trans_a && p->trans_b == trans_b &&
            p->has_bias == has_bias && p->has_c == has_c && p->dtype == dtype) return p;
    }
    if (lt_nplans == MAX_LT_PLANS) die("more than %d GEMM shapes", MAX_LT_PLANS);
    LtPlan *p = &lt_plans[lt_nplans++];
    p->m = m; p->n = n; p->k = k; p->trans_a = trans_a; p->trans_b = trans_b; p->has_bias = has_bias; p->has_c = has_c;
    p->dtype = dtype;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, tb = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    if (has_bias) {
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        cudaDataType bt = CUDA_R_16BF;
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
    }
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->la, CUDA_R_16BF, trans_a ? k : m, trans_a ? m : k, trans_a ? k : m));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lb, CUDA_R_16BF, trans_b ? n : k, trans_b ? k : n, trans_b ? n : k));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lc, has_c ? CUDA_R_16BF : dtype, m, n, m));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->ld, dtype, m, n, m));
    cublasLtMatmulPreference_t pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &LT_WORKSPACE, sizeof(LT_WORKSPACE)));
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(lt_handle, p->desc, p->la, p->lb, p->lc, p->ld, pref, 1, &heur, &found));
    if (found == 0) die("cuBLASLt has no kernel for m=%d n=%d k=%d ta=%d tb=%d bias=%d", m, n, k, trans_a, trans_b, has_bias);
    p->algo = heur.algo;
    cublasLtMatmulPreferenceDestroy(pref);
    return p;
}

// column-major D (m, n) = op(A) op(B) + beta C, op(A) (m, k), op(B) (k, n); C may be NULL (beta 0)
// or a BF16 matrix like D; bias (m) is added per row of D when given
static void lt_matmul(void *d, cudaDataType dtype, const bf16 *a, const bf16 *b, const void *c, const bf16 *bias,
                      int m, int n, int k, int trans_a, int trans_b, float beta, cudaStream_t stream) {
    LtPlan *p = lt_plan(dtype, m, n, k, trans_a, trans_b, bias != NULL, c != NULL);
    if (bias) CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    float alpha = 1.0f;
    CUBLAS_CHECK(cublasLtMatmul(lt_handle, p->desc, &alpha, a, p->la, b, p->lb, &beta, c ? c : d, p->lc, d, p->ld, &p->algo,
                                lt_workspace, LT_WORKSPACE, stream));
}

// y (N, M) = x (N, K) W (M, K)^T + bias (M) + residual (N, M); bias, residual may be NULL
static void matmul_forward(bf16 *y, const bf16 *x, const bf16 *W, const bf16 *bias, const bf16 *residual,
                           int N, int K, int M, cudaStream_t stream) {
    lt_matmul(y, CUDA_R_16BF, W, x, residual, bias, M, N, K, 1, 0, residual ? 1.0f : 0.0f, stream);
}

// dx (N, K) = dy (N, M) W (M, K)
static void matmul_dgrad(bf16 *dx, const bf16 *dy, const bf16 *W, int N, int M, int K, cudaStream_t stream) {
    lt_matmul(dx, CUDA_R_16BF, W, dy, NULL, NULL, K, N, M, 0, 0, 0.0f, stream);
}

// dW (M, K) += dy (N, M)^T x (N, K), FP32 accumulator
static void matmul_wgrad(float *dW, const bf16 *dy, const bf16 *x, int N, int M, int K, cudaStream_t stream) {
    lt_matmul(dW, CUDA_R_32F, x, dy, NULL, NULL, K, M, N, 0, 1, 1.0f, stream);
}

// ---------------------------------------------------------------------------------------------
// column sums of a row-major (N, C) BF16 matrix, optionally times a second one: out[c] += sum_n
// a[n,c] (* b[n,c]). Two passes with a fixed order: partial sums over chunks of rows, then over
// the chunks, so the result is the same on every run.

#define COLSUM_ROWS 64

__global__ void column_partial_kernel(float *partial, const bf16 *a, int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    int n0 = blockIdx.y * COLSUM_ROWS, n1 = min(n0 + COLSUM_ROWS, N);
    float s = 0.0f;
    for (int n = n0; n < n1; n++) s += __bfloat162float(a[(size_t)n * C + c]);
    partial[(size_t)blockIdx.y * C + c] = s;
}

__global__ void column_reduce_kernel(float *out, const float *partial, int chunks, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0.0f;
    for (int i = 0; i < chunks; i++) s += partial[(size_t)i * C + c];
    out[c] += s;
}

// out (C) += column sums of a (N, C); scratch holds ceil(N / 64) * C floats
static void column_sum(float *out, const bf16 *a, float *scratch, int N, int C, cudaStream_t stream) {
    int chunks = ceil_div(N, COLSUM_ROWS);
    dim3 grid(ceil_div(C, 128), chunks);
    column_partial_kernel<<<grid, 128, 0, stream>>>(scratch, a, N, C);
    column_reduce_kernel<<<ceil_div(C, 128), 128, 0, stream>>>(out, scratch, chunks, C);
    CUDA_CHECK(cudaGetLastError());
}

#endif
