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

// 2^y by the hardware's approximation (2 ulp), one instruction: results below 2^-126 flush to 0,
// past 2^128 they are inf. (__expf adds a multiply, and a range test and two more to keep
// subnormal results, which nothing here needs.)
__device__ inline float exp2_fast(float y) {
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(y));
    return r;
}

// GELU's tanh form through the logistic: 0.5 (1 + tanh(u)) = sigmoid(2u) = 1 / (1 + 2^(-2u log2 e)),
// u = k (x + 0.044715 x^3), k = sqrt(2 / pi): 7 instructions for GELU. Nothing cancels on either
// side (1 + tanh(u) as 1 + (1 - 2 / (e^2u + 1)) lost all digits below -3: 2e-4 relative), and
// far left the exponential overflows to inf and the sigmoid goes to 0 (no inf * 0).
#define GELU_K 0.7978845608028654f
#define GELU_C 0.044715f
__device__ inline float gelu_sigmoid(float x, float x2) {
    const float c0 = -2.0f * GELU_K * 1.4426950408889634f, c1 = c0 * GELU_C;  // -2u log2 e = x (c0 + c1 x^2)
    return rcp_fast(1.0f + exp2_fast(x * fmaf(x2, c1, c0)));
}

__device__ inline float gelu(float x) { return x * gelu_sigmoid(x, x * x); }

// d gelu(x) / dx = s + x s (1 - s) 2u'(x), s = sigmoid(2u), 2u' = 2k (1 + 3 0.044715 x^2)
__device__ inline float gelu_grad(float x) {
    const float d0 = 2.0f * GELU_K, d1 = d0 * 3.0f * GELU_C;
    float x2 = x * x, s = gelu_sigmoid(x, x2);
    return s * fmaf(x * fmaf(x2, d1, d0), 1.0f - s, 1.0f);
}
#undef GELU_K
#undef GELU_C

// the logistic sigmoid, within a few ulp (the exponential's error grows with |x|: 13 ulp at 10)
__device__ inline float sigmoid_fast(float x) { return rcp_fast(1.0f + exp2_fast(-1.4426950408889634f * x)); }

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
