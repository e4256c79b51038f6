// Which cuBLASLt FP8 GEMMs with OUTER_VEC_32F scales have a kernel on this GPU: shapes, scale
// pointers set before the heuristic query or not, fast accumulation, epilogues, output types.
//   nvcc -O2 -arch=sm_90 -o /tmp/probe dev/cuda/outer_vec_probe.cu -lcublasLt && /tmp/probe
#include <stdio.h>
#include <cuda_runtime.h>
#include <cublasLt.h>

int main(void) {
    cublasLtHandle_t h;
    cublasLtCreate(&h);
    int ver = (int)cublasLtGetVersion();
    printf("cuBLASLt %d\n", ver);
    void *buf;
    cudaMalloc(&buf, 64 << 20);
    const int shapes[4][3] = { { 128, 256, 64 }, { 320, 256, 192 }, { 768, 8192, 768 }, { 3072, 8192, 768 } };
    const cublasLtEpilogue_t epis[4] = { CUBLASLT_EPILOGUE_DEFAULT, CUBLASLT_EPILOGUE_BIAS, CUBLASLT_EPILOGUE_DGELU,
                                         CUBLASLT_EPILOGUE_GELU_AUX_BIAS };
    for (int s = 0; s < 4; s++)
        for (int setptr = 0; setptr < 2; setptr++)
            for (int fast = 0; fast < 2; fast++)
                for (int e = 0; e < 4; e++)
                    for (int dt = 0; dt < 2; dt++) {
                        int m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
                        cudaDataType dtype = dt ? CUDA_R_32F : CUDA_R_16BF;
                        if (dt && e) continue;
                        cublasLtMatmulDesc_t d;
                        cublasLtMatmulDescCreate(&d, CUBLAS_COMPUTE_32F, CUDA_R_32F);
                        cublasOperation_t T = CUBLAS_OP_T, N = CUBLAS_OP_N;
                        cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &T, sizeof(T));
                        cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSB, &N, sizeof(N));
                        int32_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
                        cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof(mode));
                        cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof(mode));
                        if (setptr) {
                            void *pa = buf, *pb = (char *)buf + (1 << 20);
                            cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &pa, sizeof(pa));
                            cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &pb, sizeof(pb));
                        }
                        int8_t fa = (int8_t)fast;
                        cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fa, sizeof(fa));
                        cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE, &epis[e], sizeof(epis[e]));
                        if (e) {
                            cudaDataType bt = CUDA_R_16BF;
                            cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt));
                            void *p = (char *)buf + (2 << 20);
                            cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p, sizeof(p));
                        }
                        if (e >= 2) {
                            int64_t ld = m;
                            cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof(ld));
                            cudaDataType at = CUDA_R_16BF;
                            cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE, &at, sizeof(at));
                            void *p = (char *)buf + (4 << 20);
                            cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &p, sizeof(p));
                        }
                        cublasLtMatrixLayout_t la, lb, lc;
                        cublasLtMatrixLayoutCreate(&la, CUDA_R_8F_E4M3, k, m, k);
                        cublasLtMatrixLayoutCreate(&lb, CUDA_R_8F_E4M3, k, n, k);
                        cublasLtMatrixLayoutCreate(&lc, dtype, m, n, m);
                        cublasLtMatmulPreference_t pref;
                        cublasLtMatmulPreferenceCreate(&pref);
                        size_t ws = 32 << 20;
                        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
                        cublasLtMatmulHeuristicResult_t r;
                        int found = 0;
                        cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(h, d, la, lb, lc, lc, pref, 1, &r, &found);
                        printf("m=%5d n=%5d k=%4d ptrs_set=%d fast_accum=%d epilogue=%3d out=%s: status %d, found %d\n", m, n, k,
                               setptr, fast, (int)epis[e], dt ? "fp32" : "bf16", (int)st, found);
                        cublasLtMatmulPreferenceDestroy(pref);
                        cublasLtMatrixLayoutDestroy(la); cublasLtMatrixLayoutDestroy(lb); cublasLtMatrixLayoutDestroy(lc);
                        cublasLtMatmulDescDestroy(d);
                    }
    return 0;
}
