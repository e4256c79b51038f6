// defines: cudnn_attention_forward, cudnn_attention_backward, cudnn_attention_bytes
// Causal flash attention through cuDNN's SDPA graphs (cudnn_attention.cpp, the one C++ file:
// the cuDNN frontend is a C++ library). Q, K and V are read in place from the qkv projection,
// (B, T, H + 2 KV, hd) BF16, and grouped-query attention needs no copies of K and V.
#ifndef LLMC_CUDNN_ATTENTION_H
#define LLMC_CUDNN_ATTENTION_H

#include <stddef.h>
#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

// out (B, T, H hd) BF16; stats (B, H, T) FP32 log-sum-exp for the backward, or NULL (inference)
void cudnn_attention_forward(void *out, float *stats, const void *qkv, int B, int T, int H, int KV, int hd,
                             cudaStream_t stream);

// dqkv (B, T, H + 2 KV, hd) from dout (B, T, H hd) and the forward's qkv, out and stats;
// deterministic: cuDNN's algorithm that sums dQ in a fixed order (else its fastest, whose atomic
// adds make the bits differ from run to run)
void cudnn_attention_backward(void *dqkv, const void *dout, const void *qkv, const void *out, const float *stats,
                              int B, int T, int H, int KV, int hd, int deterministic, cudaStream_t stream);

// device bytes cuDNN's workspace holds (for the peak-memory report)
size_t cudnn_attention_bytes(void);

#ifdef __cplusplus
}
#endif

#endif
