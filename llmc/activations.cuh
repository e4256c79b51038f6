// defines: gelu, swiglu, swiglu_forward, swiglu_backward
// The MLP nonlinearities: GELU (tanh form, SPEC.md 3) and SwiGLU, FP32 math. In the bf16 recipe
// GELU and its derivative run in the epilogues of the GEMMs around them (llmc/matmul.cuh); in
// the quantized recipes GELU and SwiGLU run inside the quantizer of the next linear
// (llmc/quantize.cuh), so their BF16 output is never written.
#ifndef LLMC_ACTIVATIONS_CUH
#define LLMC_ACTIVATIONS_CUH

#include "cuda_common.cuh"

__device__ inline float gelu(float x) {
    const float k = 0.7978845608028654f;  // sqrt(2/pi)
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

__device__ inline float swiglu(float gate, float up) { return gate / (1.0f + expf(-gate)) * up; }

// out (N, F) = silu(gate) * up, inp (N, 2F) = [gate | up]
__global__ void swiglu_forward_kernel(bf16 *out, const bf16 *inp, int N, int F) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * F) return;
    long long n = i / F, f = i % F;
    out[i] = __float2bfloat16(swiglu(__bfloat162float(inp[n * 2 * F + f]), __bfloat162float(inp[n * 2 * F + F + f])));
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

static void swiglu_forward(bf16 *out, const bf16 *inp, int N, int F, cudaStream_t s) {
    swiglu_forward_kernel<<<ceil_div((long long)N * F, 256), 256, 0, s>>>(out, inp, N, F);
    CUDA_CHECK(cudaGetLastError());
}
static void swiglu_backward(bf16 *dinp, const bf16 *inp, const bf16 *dout, int N, int F, cudaStream_t s) {
    swiglu_backward_kernel<<<ceil_div((long long)N * F, 256), 256, 0, s>>>(dinp, inp, dout, N, F);
    CUDA_CHECK(cudaGetLastError());
}

#endif
