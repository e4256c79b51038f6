// defines: Att8, att8_bytes, att8_carve, attention_fp8_forward
// The FP8 attention core's forward (--attn-core fp8; numerics in attention_fp8.h): Q, K, V
// quantized to E4M3 per (token, head) and written back over qkv, then a flash-attention forward
// on the FP8 tensor cores (mma.sync m16n8k32 e4m3), S = Q K^T and O = P V both from E4M3
// operands with FP32 accumulation. The backward is cuDNN's BF16 one on the quantized qkv, the
// log-sum-exp and O of this forward (attention.cuh).
//
// Layout of the work: a block of 4 warps takes 64 queries of one head, each warp 16 of them as
// the A operand of both MMAs. Key blocks of 64 stream through shared memory (cp.async, two
// buffers): K's codes as they are (B operand of Q K^T: 4 bytes of one key a register) and V's
// codes transposed, each 32 keys in the order the S accumulators hold P's (att8_key_at), so that
// P goes from the softmax into the A operand of P V without a shuffle. Rows of shared memory are
// padded by 16 bytes: the fragment loads of a warp then hit 32 different banks.
#ifndef LLMC_ATTENTION_FP8_CUH
#define LLMC_ATTENTION_FP8_CUH

#include <cuda_fp8.h>
#include "cuda_common.cuh"
#include "attention_fp8.h"

typedef struct {
    __nv_fp8_storage_t *q, *k;  // (N, H, hd), (N, KV, hd) codes
    __nv_fp8_storage_t *vt;     // (B, KV, hd, Tp) V's codes transposed, each 32 keys in att8_key_at order
    float *qs;                  // (N, H) Q's scales 2^e
    float *keys;                // (B, KV, 3, Tp) per key: K's scale 2^e, V's e, V's 2^-e (zeros past T)
} Att8;

static __host__ __device__ inline int att8_tp(int T) { return (T + ATT8_KEYS - 1) / ATT8_KEYS * ATT8_KEYS; }

// lays an Att8 out from mem (each buffer 256-byte aligned) and returns the bytes it spans; with
// mem NULL, only the bytes
static size_t att8_carve(Att8 *a, void *mem, int B, int T, int H, int KV, int hd) {
    size_t N = (size_t)B * T, Tp = att8_tp(T), at = 0;
    void **ptr[5] = { (void **)&a->q, (void **)&a->k, (void **)&a->vt, (void **)&a->qs, (void **)&a->keys };
    size_t bytes[5] = { N * H * hd, N * KV * hd, (size_t)B * KV * hd * Tp, N * H * 4, (size_t)B * KV * 3 * Tp * 4 };
    for (int i = 0; i < 5; i++) {
        if (mem) *ptr[i] = (char *)mem + at;
        at += (bytes[i] + 255) / 256 * 256;
    }
    return at;
}

static size_t att8_bytes(int B, int T, int H, int KV, int hd) {
    Att8 unused;
    return att8_carve(&unused, NULL, B, T, H, KV, hd);
}

// E4M3 codes of x (down: 2^-e), two at a time, low byte first
__device__ inline unsigned short att8_codes2(float x0, float x1, float down) {
    return __nv_cvt_float2_to_fp8x2(make_float2(x0 * down, x1 * down), __NV_SATFINITE, __NV_E4M3);
}

// the value of an E4M3 code byte
__device__ inline float att8_value(unsigned char c) {
    return __half2float(__half(__nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)c, __NV_E4M3)));
}

// one head row of D values across 8 lanes of a warp (x: this lane's D / 8 of them; live false:
// a lane past the last row, which only takes part in the shuffles): quantized in place, this
// lane's codes out (8 a uint2); returns e
template <int D>
__device__ inline int att8_quantize_row(bf16 *x, uint2 *codes, bool live) {
    constexpr int E = D / 8;
    float v[E], amax = 0.0f;
    if (live) for (int i = 0; i < E; i += 8) load8(v + i, x + i);
    if (live) for (int i = 0; i < E; i++) amax = fmaxf(amax, fabsf(v[i]));
    for (int o = 1; o < 8; o *= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    int e = att8_exponent(amax);
    if (!live) return e;
    float down = att8_pow2(-e), up = att8_pow2(e);
    for (int i = 0; i < E; i += 8) {
        unsigned c[4];
        float q[8];
        for (int k = 0; k < 4; k++) {
            c[k] = att8_codes2(v[i + 2 * k], v[i + 2 * k + 1], down);
            q[2 * k] = att8_value(c[k] & 0xff) * up;
            q[2 * k + 1] = att8_value(c[k] >> 8) * up;
        }
        codes[i / 8] = make_uint2(c[0] | c[1] << 16, c[2] | c[3] << 16);
        store_bf16<8>(x + i, q);
    }
    return e;
}

// Q's and K's head rows, 8 lanes per (token, head): codes and scales out, the quantized values
// back into qkv
template <int D>
__global__ void att8_quantize_qk_kernel(bf16 *qkv, Att8 a, int B, int T, int H, int KV) {
    long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 8;
    int lane = threadIdx.x % 8;
    bool live = row < (long long)B * T * (H + KV);
    int n = live ? (int)(row / (H + KV)) : 0, head = live ? (int)(row % (H + KV)) : 0;
    __nv_fp8_storage_t *codes = head < H ? a.q + ((size_t)n * H + head) * D : a.k + ((size_t)n * KV + head - H) * D;
    int e = att8_quantize_row<D>(qkv + ((size_t)n * (H + 2 * KV) + head) * D + lane * (D / 8), (uint2 *)(codes + lane * (D / 8)), live);
    if (!live || lane != 0) return;
    int b = n / T, t = n % T;
    if (head < H) a.qs[(size_t)n * H + head] = att8_pow2(e);
    else a.keys[((size_t)b * KV + head - H) * 3 * att8_tp(T) + t] = att8_pow2(e);
}

// V's head rows of 64 tokens of one (batch, kv head), 8 lanes per token: quantized as above, the
// codes transposed into the block's columns of vt through shared memory, V's e and 2^-e per key;
// zeros past T (K's scale there too)
template <int D>
__global__ void __launch_bounds__(256) att8_quantize_v_kernel(bf16 *qkv, Att8 a, int T, int H, int KV) {
    constexpr int E = D / 8;
    __shared__ unsigned char tile[D][ATT8_KEYS];
    int kb = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z, Tp = att8_tp(T);
    int lane = threadIdx.x % 8;
    float *keys = a.keys + ((size_t)b * KV + kvh) * 3 * Tp;
    for (int j = threadIdx.x / 8; j < ATT8_KEYS; j += blockDim.x / 8) {
        int t = kb * ATT8_KEYS + j;
        uint2 codes[E / 8];
        int e = att8_quantize_row<D>(qkv + (((size_t)b * T + (t < T ? t : 0)) * (H + 2 * KV) + H + KV + kvh) * D + lane * E,
                                     codes, t < T);
        for (int i = 0; i < E; i++) tile[lane * E + i][j] = t < T ? (i % 8 < 4 ? codes[i / 8].x : codes[i / 8].y) >> 8 * (i % 4) : 0;
        if (lane == 0) {
            if (t >= T) keys[t] = 0.0f;
            keys[Tp + t] = t < T ? (float)e : 0.0f;
            keys[2 * Tp + t] = t < T ? att8_pow2(-e) : 0.0f;
        }
    }
    __syncthreads();
    for (int chunk = threadIdx.x; chunk < D * ATT8_KEYS / 16; chunk += blockDim.x) {
        int d = chunk / (ATT8_KEYS / 16), p0 = chunk % (ATT8_KEYS / 16) * 16;
        unsigned w[4] = { 0u, 0u, 0u, 0u };
        for (int i = 0; i < 16; i++) w[i / 4] |= (unsigned)tile[d][(p0 + i) / 32 * 32 + att8_key_at((p0 + i) % 32)] << 8 * (i % 4);
        *(uint4 *)(a.vt + (((size_t)b * KV + kvh) * D + d) * Tp + kb * ATT8_KEYS + p0) = make_uint4(w[0], w[1], w[2], w[3]);
    }
}

__device__ inline void att8_mma(float *d, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 16 bytes global -> shared, zero-filled when !valid
__device__ inline void att8_cp16(void *dst, const void *src, bool valid) {
    unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(src), "r"(valid ? 16 : 0));
}

template <int D> struct Att8Smem {
    static constexpr int KS = D + 16, VS = ATT8_KEYS + 16;  // row strides, bytes
    alignas(16) unsigned char k[2][ATT8_KEYS * KS];          // key block: (64 keys, D) codes
    alignas(16) unsigned char v[2][D * VS];                  // (D, 64 keys in att8_key_at order)
    alignas(16) float keys[2][3][ATT8_KEYS];                 // K's scale, V's e, V's 2^-e
};

// key block kb of (batch, kv head) into buffer buf: K's rows past T zero-filled
template <int D>
__device__ inline void att8_load_keys(Att8Smem<D> &sm, int buf, const Att8 &a, int kb, int b, int kvh, int T, int KV) {
    int Tp = att8_tp(T);
    for (int c = threadIdx.x; c < ATT8_KEYS * D / 16; c += blockDim.x) {
        int j = c / (D / 16), t = kb * ATT8_KEYS + j;
        const __nv_fp8_storage_t *src = a.k + (((size_t)b * T + (t < T ? t : 0)) * KV + kvh) * D + c % (D / 16) * 16;
        att8_cp16(&sm.k[buf][j * Att8Smem<D>::KS + c % (D / 16) * 16], src, t < T);
    }
    for (int c = threadIdx.x; c < D * ATT8_KEYS / 16; c += blockDim.x) {
        int d = c / (ATT8_KEYS / 16), p = c % (ATT8_KEYS / 16) * 16;
        att8_cp16(&sm.v[buf][d * Att8Smem<D>::VS + p], a.vt + (((size_t)b * KV + kvh) * D + d) * Tp + kb * ATT8_KEYS + p, true);
    }
    for (int c = threadIdx.x; c < 3 * ATT8_KEYS / 4; c += blockDim.x) {
        int i = c / (ATT8_KEYS / 4), p = c % (ATT8_KEYS / 4) * 4;
        att8_cp16(&sm.keys[buf][i][p], a.keys + (((size_t)b * KV + kvh) * 3 + i) * Tp + kb * ATT8_KEYS + p, true);
    }
    asm volatile("cp.async.commit_group;");
}

// four E4M3 codes of 256 p, low byte first
__device__ inline uint32_t att8_p4(float p0, float p1, float p2, float p3) {
    unsigned lo = __nv_cvt_float2_to_fp8x2(make_float2(p0 * 256.0f, p1 * 256.0f), __NV_SATFINITE, __NV_E4M3);
    unsigned hi = __nv_cvt_float2_to_fp8x2(make_float2(p2 * 256.0f, p3 * 256.0f), __NV_SATFINITE, __NV_E4M3);
    return lo | hi << 16;
}

// grid (query blocks, H, B), 128 threads; thread (warp w, lane = 4 g + t4) holds query rows
// r[0] = 16 w + g and r[1] = r[0] + 8 of the block, and in the accumulators keys 8 n + 2 t4 (+1)
template <int D>
__global__ void __launch_bounds__(128) att8_forward_kernel(bf16 *out, float *lse, Att8 a, int T, int H, int KV) {
    __shared__ Att8Smem<D> sm;
    constexpr int KS = Att8Smem<D>::KS, VS = Att8Smem<D>::VS;
    int qb = gridDim.x - 1 - blockIdx.x;  // the longest rows first
    int h = blockIdx.y, b = blockIdx.z, kvh = h / (H / KV);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    int r[2] = { qb * ATT8_KEYS + warp * 16 + g, qb * ATT8_KEYS + warp * 16 + g + 8 };
    // Q's codes as A fragments: rows r[0], r[1]; 4 codes at 4 t4 and 16 + 4 t4 of each 32 columns
    uint32_t qa[D / 32][4];
    float scale[2];  // Q's scale * log2(e) / sqrt(D)
    for (int i = 0; i < 2; i++) {
        const __nv_fp8_storage_t *q = a.q + (((size_t)b * T + (r[i] < T ? r[i] : 0)) * H + h) * D + 4 * t4;
        for (int kk = 0; kk < D / 32; kk++) {
            qa[kk][i] = r[i] < T ? *(const uint32_t *)(q + kk * 32) : 0u;
            qa[kk][i + 2] = r[i] < T ? *(const uint32_t *)(q + kk * 32 + 16) : 0u;
        }
        scale[i] = r[i] < T ? a.qs[((size_t)b * T + r[i]) * H + h] * (1.4426950408889634f / sqrtf((float)D)) : 0.0f;
    }
    float m[2] = { -INFINITY, -INFINITY }, l[2] = { 0.0f, 0.0f };
    float o[D / 8][4];
    for (int n = 0; n < D / 8; n++) for (int i = 0; i < 4; i++) o[n][i] = 0.0f;
    att8_load_keys<D>(sm, 0, a, 0, b, kvh, T, KV);
    for (int kb = 0; kb <= qb; kb++) {
        int buf = kb & 1;
        if (kb < qb) att8_load_keys<D>(sm, buf ^ 1, a, kb + 1, b, kvh, T, KV);
        else asm volatile("cp.async.commit_group;");
        asm volatile("cp.async.wait_group 1;");
        __syncthreads();
        // S = Q K^T, then y = S * scale_q * scale_k + e_v (log2 units), masked
        float s[8][4];
        for (int n = 0; n < 8; n++) {
            for (int i = 0; i < 4; i++) s[n][i] = 0.0f;
            const unsigned char *kr = &sm.k[buf][(n * 8 + g) * KS + 4 * t4];
            for (int kk = 0; kk < D / 32; kk++)
                att8_mma(s[n], qa[kk], *(const uint32_t *)(kr + kk * 32), *(const uint32_t *)(kr + kk * 32 + 16));
        }
        float mb[2] = { m[0], m[1] };
        for (int n = 0; n < 8; n++) {
            for (int c = 0; c < 2; c++) {
                int key = n * 8 + 2 * t4 + c, j = kb * ATT8_KEYS + key;
                float ks = sm.keys[buf][0][key], ev = sm.keys[buf][1][key];
                for (int i = 0; i < 2; i++) {
                    float y = __fadd_rn(__fmul_rn(s[n][2 * i + c], scale[i] * ks), ev);
                    s[n][2 * i + c] = j > r[i] || j >= T ? -INFINITY : y;
                    mb[i] = fmaxf(mb[i], s[n][2 * i + c]);
                }
            }
        }
        for (int i = 0; i < 2; i++) {
            mb[i] = fmaxf(mb[i], __shfl_xor_sync(0xffffffffu, mb[i], 1));
            mb[i] = fmaxf(mb[i], __shfl_xor_sync(0xffffffffu, mb[i], 2));
            float alpha = exp2f(m[i] - mb[i]);
            l[i] *= alpha;
            for (int n = 0; n < D / 8; n++) { o[n][2 * i] *= alpha; o[n][2 * i + 1] *= alpha; }
            m[i] = mb[i];
        }
        for (int n = 0; n < 8; n++) {
            for (int c = 0; c < 2; c++) {
                float rv = sm.keys[buf][2][n * 8 + 2 * t4 + c];
                for (int i = 0; i < 2; i++) {
                    float p = exp2f(s[n][2 * i + c] - m[i]);
                    s[n][2 * i + c] = p;
                    l[i] += p * rv;
                }
            }
        }
        // O += P V: P's codes as A fragments, 32 keys (4 accumulator tiles) a step
        for (int kc = 0; kc < 2; kc++) {
            uint32_t pa[4];
            for (int i = 0; i < 2; i++) {
                const float *s0 = s[4 * kc], *s1 = s[4 * kc + 1], *s2 = s[4 * kc + 2], *s3 = s[4 * kc + 3];
                pa[i] = att8_p4(s0[2 * i], s0[2 * i + 1], s1[2 * i], s1[2 * i + 1]);
                pa[i + 2] = att8_p4(s2[2 * i], s2[2 * i + 1], s3[2 * i], s3[2 * i + 1]);
            }
            for (int n = 0; n < D / 8; n++) {
                const unsigned char *vr = &sm.v[buf][(n * 8 + g) * VS + kc * 32 + 4 * t4];
                att8_mma(o[n], pa, *(const uint32_t *)vr, *(const uint32_t *)(vr + 16));
            }
        }
        __syncthreads();  // the buffer is free for the load two blocks ahead
    }
    for (int i = 0; i < 2; i++) {
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
        if (r[i] >= T) continue;
        float inv = 1.0f / (l[i] * 256.0f);
        bf16 *y = out + (((size_t)b * T + r[i]) * H + h) * D + 2 * t4;
        for (int n = 0; n < D / 8; n++)
            *(__nv_bfloat162 *)(y + n * 8) = __floats2bfloat162_rn(o[n][2 * i] * inv, o[n][2 * i + 1] * inv);
        if (lse && t4 == 0) lse[((size_t)b * H + h) * T + r[i]] = (m[i] + log2f(l[i])) * 0.6931471805599453f;
    }
}

template <int D>
static void att8_launch(bf16 *out, float *lse, bf16 *qkv, const Att8 *a, int B, int T, int H, int KV, cudaStream_t st) {
    long long rows = (long long)B * T * (H + KV);
    att8_quantize_qk_kernel<D><<<ceil_div(rows * 8, 256), 256, 0, st>>>(qkv, *a, B, T, H, KV);
    att8_quantize_v_kernel<D><<<dim3(att8_tp(T) / ATT8_KEYS, KV, B), 256, 0, st>>>(qkv, *a, T, H, KV);
    att8_forward_kernel<D><<<dim3(att8_tp(T) / ATT8_KEYS, H, B), 128, 0, st>>>(out, lse, *a, T, H, KV);
    CUDA_CHECK(cudaGetLastError());
}

// out (B, T, H hd); lse (B, H, T) for the backward, or NULL; qkv's q, k, v (B, T, H + 2 KV, hd)
// replaced by their quantized values; a: scratch from att8_carve
static void attention_fp8_forward(bf16 *out, float *lse, bf16 *qkv, const Att8 *a, int B, int T, int H, int KV, int hd,
                                  cudaStream_t st) {
    if (hd == 64) att8_launch<64>(out, lse, qkv, a, B, T, H, KV, st);
    else if (hd == 128) att8_launch<128>(out, lse, qkv, a, B, T, H, KV, st);
    else die("--attn-core fp8 runs head dims 64 and 128 (this model's is %d)", hd);
}

#endif
