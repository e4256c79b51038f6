// defines: norm_forward, norm_backward
// LayerNorm (with bias) and RMSNorm (bias NULL) over rows of width C: BF16 in and out, FP32
// statistics. The backward's weight gradients sum over rows in a fixed order (deterministic).
#ifndef LLMC_NORM_CUH
#define LLMC_NORM_CUH

#include "cuda_common.cuh"

#define NORM_THREADS 256
#define NORM_ROWS 32  // rows per block in the backward: the weight-gradient partials are per block

// one block per row; mean may be NULL (RMSNorm)
__global__ void norm_forward_kernel(bf16 *out, float *mean, float *rstd, const bf16 *inp, const bf16 *w,
                                    const bf16 *b, int C, float eps) {
    const bf16 *x = inp + (size_t)blockIdx.x * C;
    float s = 0.0f;
    if (b) {
        for (int i = threadIdx.x; i < C; i += blockDim.x) s += __bfloat162float(x[i]);
        s = block_sum(s) / C;
    }
    float v = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) { float d = __bfloat162float(x[i]) - s; v += d * d; }
    float r = rsqrtf(block_sum(v) / C + eps);
    bf16 *o = out + (size_t)blockIdx.x * C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        float n = (__bfloat162float(x[i]) - s) * r * __bfloat162float(w[i]);
        o[i] = __float2bfloat16(b ? n + __bfloat162float(b[i]) : n);
    }
    if (threadIdx.x == 0) { if (mean) mean[blockIdx.x] = s; rstd[blockIdx.x] = r; }
}

// dinp (N, C) += gradient through the norm; weight (and bias) gradient partials per block
__global__ void norm_backward_kernel(bf16 *dinp, float *partial, const bf16 *dout, const bf16 *inp, const bf16 *w,
                                     const float *mean, const float *rstd, int N, int C, int layernorm) {
    extern __shared__ float acc[];  // (2, C): dw, db partials of this block's rows
    for (int i = threadIdx.x; i < 2 * C; i += blockDim.x) acc[i] = 0.0f;
    int n0 = blockIdx.x * NORM_ROWS, n1 = min(n0 + NORM_ROWS, N);
    for (int n = n0; n < n1; n++) {
        const bf16 *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        float mu = layernorm ? mean[n] : 0.0f, r = rstd[n];
        float dmean = 0.0f, dnn = 0.0f;
        for (int i = threadIdx.x; i < C; i += blockDim.x) {
            float g = __bfloat162float(w[i]) * __bfloat162float(dy[i]);
            dmean += g;
            dnn += g * (__bfloat162float(x[i]) - mu) * r;
        }
        dmean = layernorm ? block_sum(dmean) / C : 0.0f;
        dnn = block_sum(dnn) / C;
        bf16 *dx = dinp + (size_t)n * C;
        for (int i = threadIdx.x; i < C; i += blockDim.x) {
            float norm = (__bfloat162float(x[i]) - mu) * r, d = __bfloat162float(dy[i]);
            float g = (__bfloat162float(w[i]) * d - dmean - norm * dnn) * r;
            dx[i] = __float2bfloat16(__bfloat162float(dx[i]) + g);
            acc[i] += d * norm;
            acc[C + i] += d;
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 2 * C; i += blockDim.x) partial[(size_t)blockIdx.x * 2 * C + i] = acc[i];
}

__global__ void norm_reduce_kernel(float *dw, float *db, const float *partial, int blocks, int C) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= C) return;
    float sw = 0.0f, sb = 0.0f;
    for (int k = 0; k < blocks; k++) { sw += partial[(size_t)k * 2 * C + i]; sb += partial[(size_t)k * 2 * C + C + i]; }
    dw[i] += sw;
    if (db) db[i] += sb;
}

static void norm_forward(bf16 *out, float *mean, float *rstd, const bf16 *inp, const bf16 *w, const bf16 *b,
                         int N, int C, float eps, cudaStream_t stream) {
    norm_forward_kernel<<<N, NORM_THREADS, 0, stream>>>(out, mean, rstd, inp, w, b, C, eps);
    CUDA_CHECK(cudaGetLastError());
}

// scratch: ceil(N / NORM_ROWS) * 2C floats; dinp is accumulated into (the residual gradient)
static void norm_backward(bf16 *dinp, float *dw, float *db, float *scratch, const bf16 *dout, const bf16 *inp,
                          const bf16 *w, const float *mean, const float *rstd, int N, int C, cudaStream_t stream) {
    int blocks = ceil_div(N, NORM_ROWS);
    norm_backward_kernel<<<blocks, NORM_THREADS, 2 * C * sizeof(float), stream>>>(dinp, scratch, dout, inp, w, mean, rstd,
                                                                                 N, C, db != NULL);
    norm_reduce_kernel<<<ceil_div(C, 256), 256, 0, stream>>>(dw, db, scratch, blocks, C);
    CUDA_CHECK(cudaGetLastError());
}

#endif
