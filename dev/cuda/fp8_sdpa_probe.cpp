// Which cuDNN SDPA graphs with FP8 (E4M3, per-tensor scales) this GPU and cuDNN serve, for the
// FP8 attention core (issue 5): forward and backward, head dims 64 and 128, with and without
// grouped-query attention, causal; and for those served, their time against the BF16 graphs
// at the same shape. The frontend's own checks (v1.32) say, on Hopper: FP8 forward for head
// dims <= 256 with an FP8 output only, FP8 backward for head dim 128 only. This checks it.
//   g++ -O2 -std=c++17 -I/usr/local/cuda/include -I.deps/cudnn_frontend/include -o /tmp/fp8_sdpa \
//       dev/cuda/fp8_sdpa_probe.cpp -L/usr/local/cuda/lib64 -lcudnn -lnvrtc -lcudart && /tmp/fp8_sdpa
#include <stdio.h>
#include <memory>
#include <unordered_map>
#include <vector>
#include <cuda_runtime.h>
#include <cudnn_frontend.h>

namespace fe = cudnn_frontend;
using TensorPtr = std::shared_ptr<fe::graph::Tensor_attributes>;

static int next_uid = 1;
static std::vector<std::pair<int64_t, size_t>> io;  // the graph being built: each tensor's uid and bytes

static size_t elem_bytes(fe::DataType_t t) { return t == fe::DataType_t::FP8_E4M3 ? 1 : t == fe::DataType_t::BFLOAT16 ? 2 : 4; }

static TensorPtr bhsd(fe::graph::Graph &g, const char *name, int B, int H, int T, int hd, fe::DataType_t t) {
    io.push_back({ next_uid, (size_t)B * H * T * hd * elem_bytes(t) });
    return g.tensor(fe::graph::Tensor_attributes().set_name(name).set_uid(next_uid++).set_dim({B, H, T, hd})
                        .set_stride({(int64_t)H * T * hd, (int64_t)T * hd, hd, 1}).set_data_type(t));
}

static TensorPtr scalar(fe::graph::Graph &g, const char *name) {
    io.push_back({ next_uid, 0 });  // 0: a unit scale
    return g.tensor(fe::graph::Tensor_attributes().set_name(name).set_uid(next_uid++).set_dim({1, 1, 1, 1})
                        .set_stride({1, 1, 1, 1}).set_data_type(fe::DataType_t::FLOAT));
}

static void mark(TensorPtr t, fe::DataType_t type, int B, int H, int T, int hd) {
    io.push_back({ next_uid, hd ? (size_t)B * H * T * hd * elem_bytes(type) : sizeof(float) });
    t->set_output(true).set_uid(next_uid++).set_data_type(type);
    if (hd) t->set_dim({B, H, T, hd}).set_stride({(int64_t)H * T * hd, (int64_t)T * hd, hd, 1});
    else t->set_dim({1, 1, 1, 1}).set_stride({1, 1, 1, 1});
}

// one graph: fp8 or bf16, forward (with stats) or backward; NULL with the reason if not served
static std::shared_ptr<fe::graph::Graph> build(cudnnHandle_t h, int fp8, int bwd, int B, int T, int H, int KV, int hd,
                                               fe::DataType_t out_type, std::string *why) {
    io.clear();
    auto g = std::make_shared<fe::graph::Graph>();
    fe::DataType_t iot = fp8 ? fe::DataType_t::FP8_E4M3 : fe::DataType_t::BFLOAT16;
    g->set_io_data_type(iot).set_intermediate_data_type(fe::DataType_t::FLOAT).set_compute_data_type(fe::DataType_t::FLOAT);
    auto Q = bhsd(*g, "Q", B, H, T, hd, iot), K = bhsd(*g, "K", B, KV, T, hd, iot), V = bhsd(*g, "V", B, KV, T, hd, iot);
    float scale = 1.0f / sqrtf((float)hd);
    if (!bwd) {
        auto o = fe::graph::SDPA_attributes().set_name("fwd").set_generate_stats(true).set_attn_scale(scale).set_causal_mask(true);
        TensorPtr O, S;
        if (fp8) {
            auto r = g->sdpa_fp8(Q, K, V, scalar(*g, "dq"), scalar(*g, "dk"), scalar(*g, "dv"), scalar(*g, "ds"), scalar(*g, "ss"),
                                 scalar(*g, "so"), o);
            O = r[0]; S = r[1];
            mark(r[2], fe::DataType_t::FLOAT, 0, 0, 0, 0);
            mark(r[3], fe::DataType_t::FLOAT, 0, 0, 0, 0);
        } else {
            auto r = g->sdpa(Q, K, V, o);
            O = r[0]; S = r[1];
        }
        mark(O, out_type, B, H, T, hd);
        io.push_back({ next_uid, (size_t)B * H * T * sizeof(float) });
        S->set_output(true).set_uid(next_uid++).set_data_type(fe::DataType_t::FLOAT);
    } else {
        auto O = bhsd(*g, "O", B, H, T, hd, iot), dO = bhsd(*g, "dO", B, H, T, hd, iot);
        io.push_back({ next_uid, (size_t)B * H * T * sizeof(float) });
        auto S = g->tensor(fe::graph::Tensor_attributes().set_name("stats").set_uid(next_uid++).set_dim({B, H, T, 1})
                               .set_stride({(int64_t)H * T, T, 1, 1}).set_data_type(fe::DataType_t::FLOAT));
        if (fp8) {
            auto o = fe::graph::SDPA_fp8_backward_attributes().set_name("bwd").set_attn_scale(scale).set_causal_mask(true);
            auto r = g->sdpa_fp8_backward(Q, K, V, O, dO, S, scalar(*g, "dq"), scalar(*g, "dk"), scalar(*g, "dv"), scalar(*g, "do"),
                                          scalar(*g, "ddo"), scalar(*g, "ds"), scalar(*g, "ddp"), scalar(*g, "ss"), scalar(*g, "sdq"),
                                          scalar(*g, "sdk"), scalar(*g, "sdv"), scalar(*g, "sdp"), o);
            mark(r[0], out_type, B, H, T, hd); mark(r[1], out_type, B, KV, T, hd); mark(r[2], out_type, B, KV, T, hd);
            for (int i = 3; i < 7; i++) mark(r[i], fe::DataType_t::FLOAT, 0, 0, 0, 0);
        } else {
            auto o = fe::graph::SDPA_backward_attributes().set_name("bwd").set_attn_scale(scale).set_causal_mask(true);
            auto r = g->sdpa_backward(Q, K, V, O, dO, S, o);
            mark(r[0], out_type, B, H, T, hd); mark(r[1], out_type, B, KV, T, hd); mark(r[2], out_type, B, KV, T, hd);
        }
    }
    fe::error_t e = g->validate();
    if (e.is_good()) e = g->build_operation_graph(h);
    if (e.is_good()) e = g->create_execution_plans({fe::HeurMode_t::A});
    if (e.is_good()) e = g->check_support(h);
    if (e.is_good()) e = g->build_plans(h);
    if (e.is_bad()) { *why = e.get_message(); return nullptr; }
    return g;
}

// ms per execution of the graph just built (io): zeroed tensors, unit scales; 10 runs after 3
static float time_graph(cudnnHandle_t h, fe::graph::Graph &g) {
    std::unordered_map<int64_t, void *> ptrs;
    std::vector<void *> mem;
    float one = 1.0f;
    for (auto &[uid, bytes] : io) {
        void *d;
        if (cudaMalloc(&d, bytes ? bytes : sizeof(float)) != cudaSuccess) return -1.0f;
        if (bytes) cudaMemset(d, 0, bytes);
        else cudaMemcpy(d, &one, sizeof(float), cudaMemcpyHostToDevice);
        ptrs[uid] = d;
        mem.push_back(d);
    }
    int64_t ws = 0;
    if (g.get_workspace_size(ws).is_bad()) return -1.0f;
    void *work = nullptr;
    if (ws > 0 && cudaMalloc(&work, (size_t)ws) != cudaSuccess) return -1.0f;
    cudaEvent_t a, b;
    cudaEventCreate(&a); cudaEventCreate(&b);
    float ms = -1.0f;
    for (int i = 0; i < 13; i++) {
        if (i == 3) cudaEventRecord(a);
        if (g.execute(h, ptrs, work).is_bad()) break;
        if (i == 12) { cudaEventRecord(b); cudaEventSynchronize(b); cudaEventElapsedTime(&ms, a, b); ms /= 10.0f; }
    }
    for (void *d : mem) cudaFree(d);
    if (work) cudaFree(work);
    return ms;
}

int main(void) {
    cudnnHandle_t h;
    if (cudnnCreate(&h) != CUDNN_STATUS_SUCCESS) { printf("cudnnCreate failed\n"); return 1; }
    cudaDeviceProp p;
    cudaGetDeviceProperties(&p, 0);
    printf("%s, cuDNN %zu, frontend %d.%d\n", p.name, cudnnGetVersion(), CUDNN_FRONTEND_MAJOR_VERSION, CUDNN_FRONTEND_MINOR_VERSION);
    const int B = 8, T = 1024;
    const int cfg[4][3] = { { 12, 12, 64 }, { 32, 8, 64 }, { 12, 12, 128 }, { 16, 4, 128 } };  // H, KV, hd
    for (int c = 0; c < 4; c++) {
        int H = cfg[c][0], KV = cfg[c][1], hd = cfg[c][2];
        for (int bwd = 0; bwd < 2; bwd++) {
            std::string why;
            auto g16 = build(h, 0, bwd, B, T, H, KV, hd, fe::DataType_t::BFLOAT16, &why);
            float t16 = g16 ? time_graph(h, *g16) : -1.0f;
            for (int out = 0; out < 2; out++) {  // the output (O, or dQ dK dV): FP8 E4M3, then BF16
                fe::DataType_t ot = out ? fe::DataType_t::BFLOAT16 : fe::DataType_t::FP8_E4M3;
                auto g = build(h, 1, bwd, B, T, H, KV, hd, ot, &why);
                printf("B=%d T=%d H=%d KV=%d hd=%d %s, fp8 in, %s out: ", B, T, H, KV, hd, bwd ? "backward" : "forward ", out ? "bf16" : "fp8 ");
                if (g) printf("served, %.3f ms (bf16 graph %.3f ms)\n", time_graph(h, *g), t16);
                else printf("not served: %s\n", why.c_str());
            }
        }
    }
    cudnnDestroy(h);
    return 0;
}
