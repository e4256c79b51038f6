// defines: gelu_forward, swiglu_forward, swiglu_backward
// The MLP nonlinearities, elementwise, BF16 in and out, FP32 math. (GELU's derivative runs in the
// epilogue of the GEMM before it, llmc/matmul.cuh; in BF16 GELU itself does too.)
#ifndef LLMC_ACTIVATIONS_CUH
#define LLMC_ACTIVATIONS_CUH

#include "cuda_common.cuh"

#define GELU_K 0.7978845608028654f  // sqrt(2/pi)

__global__ void gelu_forward_kernel(bf16 *out, const bf16 *inp, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = __bfloat162float(inp[i]);
    out[i] = __float2bfloat16(0.5f * x * (1.0f + tanhf(GELU_K * (x + 0.044715f * x * x * x))));
}

// out (N, F) = silu(gate) * up, inp (N, 2F) = [gate | up]
__global__ void swiglu_forward_kernel(bf16 *out, const bf16 *inp, int N, int F) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * F) return;
    long long n = i / F, f = i % F;
    float g = __bfloat162float(inp[n * 2 * F + f]), u = __bfloat162float(inp[n * 2 * F + F + f]);
    out[i] = __float2bfloat16(g / (1.0f + expf(-g)) * u);
}

__global__ void swiglu_backward_kernel(bf16 *dinp, const bf16 *inp, const bf16 *dout, int N, int F) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * F) return;
    long long n = i / F, f = i % F;
    float g = __bfloat162float(inp[n * 2 * F + f]), u = __bfloat162float(inp[n * 2 * F + F + f]);
    float sig = 1.0f / (1.0f + expf(-g)), d = __bfloat162float(dout[i]);
    dinp[n * 2 * F + f] = __float2bfloat16(d * u * sig * (1.0f + g * (1.0f - sig)));
    dinp[n * 2 * F + F + f] = __float2bfloat16(d * g * sig);
}

static void gelu_forward(bf16 *out, const bf16 *inp, long long n, cudaStream_t s) {
    gelu_forward_kernel<<<ceil_div(n, 256), 256, 0, s>>>(out, inp, n);
    CUDA_CHECK(cudaGetLastError());
}
static void swiglu_forward(bf16 *out, const bf16 *inp, int N, int F, cudaStream_t s) {
    swiglu_forward_kernel<<<ceil_div((long long)N * F, 256), 256, 0, s>>>(out, inp, N, F);
    CUDA_CHECK(cudaGetLastError());
}
static void swiglu_backward(bf16 *dinp, const bf16 *inp, const bf16 *dout, int N, int F, cudaStream_t s) {
    swiglu_backward_kernel<<<ceil_div((long long)N * F, 256), 256, 0, s>>>(dinp, inp, dout, N, F);
    CUDA_CHECK(cudaGetLastError());
}

#endif
