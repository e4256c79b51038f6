// Causal attention forward and backward as cuDNN SDPA graphs, built once per shape and cached.
// The frontend is C++, so this file is the project's only C++ beyond what CUDA needs.
#include <map>
#include <array>
#include <memory>
#include <cudnn_frontend.h>
#include "cudnn_attention.h"
#include "utils.h"

namespace fe = cudnn_frontend;

enum { UID_Q = 1, UID_K, UID_V, UID_O, UID_STATS, UID_DO, UID_DQ, UID_DK, UID_DV };

static cudnnHandle_t handle;
static void *workspace;
static size_t workspace_bytes;
static std::map<std::array<int, 6>, std::shared_ptr<fe::graph::Graph>> graphs;  // (kind, B, T, H, KV, hd)

static void check(fe::error_t e, const char *what) {
    if (e.is_bad()) die("cuDNN attention (%s): %s", what, e.get_message().c_str());
}

// q, k, v as views of the qkv rows (B, T, H + 2 KV, hd): no copies
static std::shared_ptr<fe::graph::Tensor_attributes> qkv_view(fe::graph::Graph &g, const char *name, int uid, int B, int T,
                                                              int heads, int all_heads, int hd) {
    return g.tensor(fe::graph::Tensor_attributes().set_name(name).set_uid(uid)
                        .set_dim({B, heads, T, hd})
                        .set_stride({(int64_t)T * all_heads * hd, hd, (int64_t)all_heads * hd, 1}));
}

static std::shared_ptr<fe::graph::Tensor_attributes> rows_view(fe::graph::Graph &g, const char *name, int uid, int B, int T,
                                                               int H, int hd) {
    return g.tensor(fe::graph::Tensor_attributes().set_name(name).set_uid(uid)
                        .set_dim({B, H, T, hd}).set_stride({(int64_t)T * H * hd, hd, (int64_t)H * hd, 1}));
}

// kind 0: inference forward, 1: training forward (with stats), 2: backward, 3: deterministic backward
static fe::graph::Graph &graph_for(int kind, int B, int T, int H, int KV, int hd) {
    std::array<int, 6> key = { kind, B, T, H, KV, hd };
    auto it = graphs.find(key);
    if (it != graphs.end()) return *it->second;
    if (handle == nullptr) {
        if (cudnnCreate(&handle) != CUDNN_STATUS_SUCCESS) die("cudnnCreate failed");
    }
    auto g = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(fe::DataType_t::BFLOAT16)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    int all = H + 2 * KV;
    auto Q = qkv_view(*g, "Q", UID_Q, B, T, H, all, hd);
    auto K = qkv_view(*g, "K", UID_K, B, T, KV, all, hd);
    auto V = qkv_view(*g, "V", UID_V, B, T, KV, all, hd);
    float scale = 1.0f / sqrtf((float)hd);
    if (kind < 2) {
        auto opts = fe::graph::SDPA_attributes().set_name("sdpa").set_generate_stats(kind == 1)
                        .set_attn_scale(scale).set_causal_mask(true);
        auto [O, stats] = g->sdpa(Q, K, V, opts);
        O->set_output(true).set_uid(UID_O).set_dim({B, H, T, hd}).set_stride({(int64_t)T * H * hd, hd, (int64_t)H * hd, 1});
        if (kind == 1) stats->set_output(true).set_uid(UID_STATS).set_data_type(fe::DataType_t::FLOAT);
    } else {
        auto O = rows_view(*g, "O", UID_O, B, T, H, hd);
        auto dO = rows_view(*g, "dO", UID_DO, B, T, H, hd);
        auto stats = g->tensor(fe::graph::Tensor_attributes().set_name("stats").set_uid(UID_STATS)
                                   .set_dim({B, H, T, 1}).set_stride({(int64_t)H * T, T, 1, 1})
                                   .set_data_type(fe::DataType_t::FLOAT));
        auto opts = fe::graph::SDPA_backward_attributes().set_name("sdpa_backward").set_attn_scale(scale).set_causal_mask(true)
                        .set_deterministic_algorithm(kind == 3);
        auto [dQ, dK, dV] = g->sdpa_backward(Q, K, V, O, dO, stats, opts);
        dQ->set_output(true).set_uid(UID_DQ).set_dim({B, H, T, hd}).set_stride({(int64_t)T * all * hd, hd, (int64_t)all * hd, 1});
        dK->set_output(true).set_uid(UID_DK).set_dim({B, KV, T, hd}).set_stride({(int64_t)T * all * hd, hd, (int64_t)all * hd, 1});
        dV->set_output(true).set_uid(UID_DV).set_dim({B, KV, T, hd}).set_stride({(int64_t)T * all * hd, hd, (int64_t)all * hd, 1});
    }
    check(g->validate(), "validate");
    check(g->build_operation_graph(handle), "build_operation_graph");
    check(g->create_execution_plans({fe::HeurMode_t::A}), "create_execution_plans");
    check(g->check_support(handle), "check_support");
    check(g->build_plans(handle), "build_plans");
    int64_t ws = 0;
    check(g->get_workspace_size(ws), "get_workspace_size");
    if ((size_t)ws > workspace_bytes) {
        if (workspace) cudaFree(workspace);
        if (cudaMalloc(&workspace, (size_t)ws) != cudaSuccess) die("out of GPU memory for the cuDNN workspace (%lld bytes)", (long long)ws);
        workspace_bytes = (size_t)ws;
    }
    graphs[key] = g;
    return *g;
}

static void run(fe::graph::Graph &g, std::unordered_map<int64_t, void *> &ptrs, cudaStream_t stream) {
    if (cudnnSetStream(handle, stream) != CUDNN_STATUS_SUCCESS) die("cudnnSetStream failed");
    check(g.execute(handle, ptrs, workspace), "execute");
}

extern "C" void cudnn_attention_forward(void *out, float *stats, const void *qkv, int B, int T, int H, int KV, int hd,
                                        cudaStream_t stream) {
    fe::graph::Graph &g = graph_for(stats ? 1 : 0, B, T, H, KV, hd);
    char *base = (char *)qkv;
    size_t head_bytes = (size_t)hd * 2;  // BF16
    std::unordered_map<int64_t, void *> ptrs = {
        { UID_Q, base }, { UID_K, base + H * head_bytes }, { UID_V, base + (H + KV) * head_bytes }, { UID_O, out } };
    if (stats) ptrs[UID_STATS] = stats;
    run(g, ptrs, stream);
}

extern "C" void cudnn_attention_backward(void *dqkv, const void *dout, const void *qkv, const void *out, const float *stats,
                                         int B, int T, int H, int KV, int hd, int deterministic, cudaStream_t stream) {
    fe::graph::Graph &g = graph_for(deterministic ? 3 : 2, B, T, H, KV, hd);
    char *base = (char *)qkv, *dbase = (char *)dqkv;
    size_t head_bytes = (size_t)hd * 2;
    std::unordered_map<int64_t, void *> ptrs = {
        { UID_Q, base }, { UID_K, base + H * head_bytes }, { UID_V, base + (H + KV) * head_bytes },
        { UID_O, (void *)out }, { UID_DO, (void *)dout }, { UID_STATS, (void *)stats },
        { UID_DQ, dbase }, { UID_DK, dbase + H * head_bytes }, { UID_DV, dbase + (H + KV) * head_bytes } };
    run(g, ptrs, stream);
}

extern "C" size_t cudnn_attention_bytes(void) { return workspace_bytes; }
