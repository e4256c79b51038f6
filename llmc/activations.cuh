// defines: gelu, gelu_grad, swiglu, swiglu_grad, swiglu_forward, swiglu_backward
// The MLP nonlinearities: GELU (tanh form, SPEC.md 3) and SwiGLU, FP32 math. In the bf16 recipe
// GELU and its derivative run in the epilogues of the GEMMs around them (llmc/matmul.cuh); in
// the quantized recipes GELU and SwiGLU, and their derivatives, run inside the quantizers of the
// linears that consume them (llmc/quantize.cuh), so their BF16 outputs are never written.
#ifndef LLMC_ACTIVATIONS_CUH
#define LLMC_ACTIVATIONS_CUH

#include "cuda_common.cuh"

// 1 / x by the hardware's reciprocal, within 1 ulp (0 for x past 2^126; x >= 1 here): the
// quantizers make these nonlinearities per element in several passes a step, where an IEEE
// division would be 9 instructions and a slow-path branch
__device__ inline float rcp_fast(float x) { return __fdividef(1.0f, x); }

// tanh from one exponential (within a few FP32 ulp of tanhf near its saturation, 1e-7 absolute
// near 0, where GELU adds it to 1)
__device__ inline float tanh_fast(float u) { return 1.0f - 2.0f * rcp_fast(__expf(2.0f * u) + 1.0f); }

__device__ inline float gelu(float x) {
    const float k = 0.7978845608028654f;  // sqrt(2/pi)
    return 0.5f * x * (1.0f + tanh_fast(k * (x + 0.044715f * x * x * x)));
}

// d gelu(x) / dx, in the CPU reference's form
__device__ inline float gelu_grad(float x) {
    const float k = 0.7978845608028654f;
    float th = tanh_fast(k * (x + 0.044715f * x * x * x));
    return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * k * (1.0f + 3.0f * 0.044715f * x * x);
}

// the logistic sigmoid, within a few ulp (__expf's error grows with |x|: 13 ulp at 10)
__device__ inline float sigmoid_fast(float x) { return rcp_fast(1.0f + __expf(-x)); }

__device__ inline float swiglu(float gate, float up) { return gate * sigmoid_fast(gate) * up; }

// the gradients of gate and up from d, the gradient of swiglu(gate, up)
__device__ inline void swiglu_grad(float gate, float up, float d, float *dgate, float *dup) {
    float sig = sigmoid_fast(gate);
    *dgate = d * up * sig * (1.0f + gate * (1.0f - sig));
    *dup = d * gate * sig;
}

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
    float dg, du;
    swiglu_grad(__bfloat162float(inp[n * 2 * F + f]), __bfloat162float(inp[n * 2 * F + F + f]), __bfloat162float(dout[i]), &dg, &du);
    dinp[n * 2 * F + f] = __float2bfloat16(dg);
    dinp[n * 2 * F + F + f] = __float2bfloat16(du);
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
