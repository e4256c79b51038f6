// defines: attention_init, attention_forward, attention_backward
// Causal attention with grouped-query heads, on cuBLAS batched GEMMs: the scores of the query
// heads of one key/value head form one (group*T, T) matrix, so GQA needs no copies of K and V.
// RoPE (LLaMA) is applied while q, k, v are permuted out of the qkv projection.
// This first version keeps the (B, H, T, T) probabilities for the backward; a flash-attention
// core replaces it later.
#ifndef LLMC_ATTENTION_CUH
#define LLMC_ATTENTION_CUH

#include "cuda_common.cuh"

static cublasHandle_t blas_handle;

static void attention_init(void) { CUBLAS_CHECK(cublasCreate(&blas_handle)); }

// row-major per batch: C (m rows, n cols) = alpha op(A) op(B), via column-major C^T = op(B)^T op(A)^T.
// a (m, k) [or (k, m) if ta], b (k, n) [or (n, k) if tb]; strides in elements per batch
static void bgemm(void *c, cudaDataType ctype, const bf16 *a, const bf16 *b, int m, int n, int k, int ta, int tb,
                  long long sa, long long sb, long long sc, int batch, float alpha, cudaStream_t stream) {
    float beta = 0.0f;
    CUBLAS_CHECK(cublasSetStream(blas_handle, stream));
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(blas_handle, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                            n, m, k, &alpha, b, CUDA_R_16BF, tb ? k : n, sb, a, CUDA_R_16BF, ta ? m : k, sa,
                                            &beta, c, ctype, n, sc, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// thread idx of the (B, T, heads, hd/2) pairs of qkv: returns 0 past the end, else its b, t, h, i
__device__ inline int qkv_pair(long long idx, int B, int T, int heads, int hd, int *b, int *t, int *h, int *i) {
    if (idx >= (long long)B * T * heads * hd / 2) return 0;
    *i = idx % (hd / 2);
    *h = (idx / (hd / 2)) % heads;
    *t = (idx / ((long long)hd / 2 * heads)) % T;
    *b = idx / ((long long)hd / 2 * heads * T);
    return 1;
}

// qkv (B, T, (H + 2KV) hd) -> q (B, H, T, hd), k and v (B, KV, T, hd); rotates q and k if cos != NULL
__global__ void permute_rope_kernel(bf16 *q, bf16 *k, bf16 *v, const bf16 *qkv, const float *cos, const float *sin,
                                    int B, int T, int H, int KV, int hd) {
    int heads = H + 2 * KV, b, t, h, i;
    if (!qkv_pair((long long)blockIdx.x * blockDim.x + threadIdx.x, B, T, heads, hd, &b, &t, &h, &i)) return;
    const bf16 *src = qkv + (((long long)b * T + t) * heads + h) * hd + 2 * i;
    float x0 = __bfloat162float(src[0]), x1 = __bfloat162float(src[1]);
    if (cos && h < H + KV) {
        float c = cos[t * hd / 2 + i], s = sin[t * hd / 2 + i];
        float r0 = x0 * c - x1 * s, r1 = x0 * s + x1 * c;
        x0 = r0; x1 = r1;
    }
    bf16 *dst;
    if (h < H) dst = q + (((long long)b * H + h) * T + t) * hd;
    else if (h < H + KV) dst = k + (((long long)b * KV + h - H) * T + t) * hd;
    else dst = v + (((long long)b * KV + h - H - KV) * T + t) * hd;
    dst[2 * i] = __float2bfloat16(x0);
    dst[2 * i + 1] = __float2bfloat16(x1);
}

// the inverse: dq, dk, dv -> dqkv, rotating back by -angle
__global__ void unpermute_rope_kernel(bf16 *dqkv, const bf16 *dq, const bf16 *dk, const bf16 *dv, const float *cos,
                                      const float *sin, int B, int T, int H, int KV, int hd) {
    int heads = H + 2 * KV, b, t, h, i;
    if (!qkv_pair((long long)blockIdx.x * blockDim.x + threadIdx.x, B, T, heads, hd, &b, &t, &h, &i)) return;
    const bf16 *src;
    if (h < H) src = dq + (((long long)b * H + h) * T + t) * hd;
    else if (h < H + KV) src = dk + (((long long)b * KV + h - H) * T + t) * hd;
    else src = dv + (((long long)b * KV + h - H - KV) * T + t) * hd;
    float x0 = __bfloat162float(src[2 * i]), x1 = __bfloat162float(src[2 * i + 1]);
    if (cos && h < H + KV) {
        float c = cos[t * hd / 2 + i], s = sin[t * hd / 2 + i];
        float r0 = x0 * c + x1 * s, r1 = -x0 * s + x1 * c;
        x0 = r0; x1 = r1;
    }
    bf16 *dst = dqkv + (((long long)b * T + t) * heads + h) * hd + 2 * i;
    dst[0] = __float2bfloat16(x0);
    dst[1] = __float2bfloat16(x1);
}

// y (B, H, T, hd) -> out (B, T, H hd), and back
__global__ void heads_to_rows_kernel(bf16 *out, const bf16 *y, int B, int T, int H, int hd, int inverse) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)B * T * H * hd) return;
    int i = idx % hd, h = (idx / hd) % H, t = (idx / ((long long)hd * H)) % T, b = idx / ((long long)hd * H * T);
    long long heads = (((long long)b * H + h) * T + t) * hd + i;
    if (inverse) out[heads] = y[idx]; else out[idx] = y[heads];
}

// causal softmax of rows of scores (rows, T), row r is query position r % T; one warp a row
__global__ void causal_softmax_kernel(bf16 *att, const float *scores, long long rows, int T) {
    long long r = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows) return;
    int lane = threadIdx.x % 32, t = r % T;
    const float *s = scores + r * T;
    float m = -INFINITY;
    for (int j = lane; j <= t; j += 32) m = fmaxf(m, s[j]);
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float sum = 0.0f;
    for (int j = lane; j <= t; j += 32) sum += expf(s[j] - m);
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    float inv = 1.0f / sum;
    bf16 *a = att + r * T;
    for (int j = lane; j < T; j += 32) a[j] = __float2bfloat16(j <= t ? expf(s[j] - m) * inv : 0.0f);
}

// dscores = att * (datt - sum(att * datt)) * scale, in place of datt's BF16 copy
__global__ void causal_softmax_backward_kernel(bf16 *dscores, const float *datt, const bf16 *att, long long rows, int T,
                                               float scale) {
    long long r = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows) return;
    int lane = threadIdx.x % 32, t = r % T;
    const float *d = datt + r * T;
    const bf16 *a = att + r * T;
    float dot = 0.0f;
    for (int j = lane; j <= t; j += 32) dot += __bfloat162float(a[j]) * d[j];
    for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    bf16 *ds = dscores + r * T;
    for (int j = lane; j < T; j += 32) ds[j] = __float2bfloat16(j <= t ? __bfloat162float(a[j]) * (d[j] - dot) * scale : 0.0f);
}

typedef struct {  // buffers of one attention call
    bf16 *q, *k, *v;   // (B, H, T, hd), (B, KV, T, hd) x 2: saved for the backward
    bf16 *att;         // (B, H, T, T) probabilities: saved
} AttnSaved;

// out (B, T, H hd); scores: (B, H, T, T) FP32 scratch; y: (B, H, T, hd) BF16 scratch
static void attention_forward(bf16 *out, AttnSaved *s, float *scores, bf16 *y, const bf16 *qkv, const float *cos,
                              const float *sin, int B, int T, int H, int KV, int hd, cudaStream_t stream) {
    int g = H / KV;
    long long pairs = (long long)B * T * (H + 2 * KV) * hd / 2;
    permute_rope_kernel<<<ceil_div(pairs, 256), 256, 0, stream>>>(s->q, s->k, s->v, qkv, cos, sin, B, T, H, KV, hd);
    // scores (g T, T) = q_group (g T, hd) k^T, one batch per (b, kv head)
    bgemm(scores, CUDA_R_32F, s->q, s->k, g * T, T, hd, 0, 1, (long long)g * T * hd, (long long)T * hd,
          (long long)g * T * T, B * KV, 1.0f / sqrtf((float)hd), stream);
    long long rows = (long long)B * H * T;
    causal_softmax_kernel<<<ceil_div(rows, 8), 256, 0, stream>>>(s->att, scores, rows, T);
    bgemm(y, CUDA_R_16BF, s->att, s->v, g * T, hd, T, 0, 0, (long long)g * T * T, (long long)T * hd, (long long)g * T * hd,
          B * KV, 1.0f, stream);
    heads_to_rows_kernel<<<ceil_div((long long)B * T * H * hd, 256), 256, 0, stream>>>(out, y, B, T, H, hd, 0);
    CUDA_CHECK(cudaGetLastError());
}

// dqkv (B, T, (H + 2KV) hd) from dout (B, T, H hd). Scratch: datt (B, H, T, T) FP32, dscores
// (B, H, T, T) BF16, dy (B, H, T, hd), dq (B, H, T, hd), dk and dv (B, KV, T, hd)
static void attention_backward(bf16 *dqkv, const AttnSaved *s, float *datt, bf16 *dscores, bf16 *dy, bf16 *dq, bf16 *dk,
                               bf16 *dv, const bf16 *dout, const float *cos, const float *sin, int B, int T, int H, int KV,
                               int hd, cudaStream_t stream) {
    int g = H / KV;
    long long gT = (long long)g * T;
    heads_to_rows_kernel<<<ceil_div((long long)B * T * H * hd, 256), 256, 0, stream>>>(dy, dout, B, T, H, hd, 1);
    // datt (gT, T) = dy (gT, hd) v^T; dv (T, hd) = att^T (T, gT) dy (gT, hd)
    bgemm(datt, CUDA_R_32F, dy, s->v, g * T, T, hd, 0, 1, gT * hd, (long long)T * hd, gT * T, B * KV, 1.0f, stream);
    bgemm(dv, CUDA_R_16BF, s->att, dy, T, hd, g * T, 1, 0, gT * T, gT * hd, (long long)T * hd, B * KV, 1.0f, stream);
    long long rows = (long long)B * H * T;
    causal_softmax_backward_kernel<<<ceil_div(rows, 8), 256, 0, stream>>>(dscores, datt, s->att, rows, T,
                                                                         1.0f / sqrtf((float)hd));
    // dq (gT, hd) = dscores (gT, T) k (T, hd); dk (T, hd) = dscores^T (T, gT) q (gT, hd)
    bgemm(dq, CUDA_R_16BF, dscores, s->k, g * T, hd, T, 0, 0, gT * T, (long long)T * hd, gT * hd, B * KV, 1.0f, stream);
    bgemm(dk, CUDA_R_16BF, dscores, s->q, T, hd, g * T, 1, 0, gT * T, gT * hd, (long long)T * hd, B * KV, 1.0f, stream);
    long long pairs = (long long)B * T * (H + 2 * KV) * hd / 2;
    unpermute_rope_kernel<<<ceil_div(pairs, 256), 256, 0, stream>>>(dqkv, dq, dk, dv, cos, sin, B, T, H, KV, hd);
    CUDA_CHECK(cudaGetLastError());
}

#endif
