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

// out (N, F) = silu(gate) * up, inp (N, 2F) = [gate | up]: a block a row, W columns a thread at a
// time (8 with 16-byte accesses where F allows them; a thread an element with a 64-bit division
// for its row ran at half of HBM bandwidth)
template <int W> __global__ void swiglu_forward_kernel(bf16 *out, const bf16 *inp, int F) {
    const bf16 *gate = inp + (size_t)blockIdx.x * 2 * F, *up = gate + F;
    bf16 *o = out + (size_t)blockIdx.x * F;
    for (int f = W * threadIdx.x; f < F; f += W * blockDim.x) {
        float g[W], u[W];
        load_bf16<W>(g, gate + f);
        load_bf16<W>(u, up + f);
        for (int k = 0; k < W; k++) g[k] = swiglu(g[k], u[k]);
        store_bf16<W>(o + f, g);
    }
}

// dinp (N, 2F) = [dgate | dup] from dout (N, F), laid out as the forward
template <int W> __global__ void swiglu_backward_kernel(bf16 *dinp, const bf16 *inp, const bf16 *dout, int F) {
    size_t row = (size_t)blockIdx.x * 2 * F;
    const bf16 *d = dout + (size_t)blockIdx.x * F;
    for (int f = W * threadIdx.x; f < F; f += W * blockDim.x) {
        float g[W], u[W], dy[W];
        load_bf16<W>(g, inp + row + f);
        load_bf16<W>(u, inp + row + F + f);
        load_bf16<W>(dy, d + f);
        for (int k = 0; k < W; k++) swiglu_grad(g[k], u[k], dy[k], &g[k], &u[k]);
        store_bf16<W>(dinp + row + f, g);
        store_bf16<W>(dinp + row + F + f, u);
    }
}

static void swiglu_forward(bf16 *out, const bf16 *inp, int N, int F, cudaStream_t s) {
    if (F % 8 == 0) swiglu_forward_kernel<8><<<N, 256, 0, s>>>(out, inp, F);
    else swiglu_forward_kernel<1><<<N, 256, 0, s>>>(out, inp, F);
    CUDA_CHECK(cudaGetLastError());
}
static void swiglu_backward(bf16 *dinp, const bf16 *inp, const bf16 *dout, int N, int F, cudaStream_t s) {
    if (F % 8 == 0) swiglu_backward_kernel<8><<<N, 256, 0, s>>>(dinp, inp, dout, F);
    else swiglu_backward_kernel<1><<<N, 256, 0, s>>>(dinp, inp, dout, F);
    CUDA_CHECK(cudaGetLastError());
}

#endif
