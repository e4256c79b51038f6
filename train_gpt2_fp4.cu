/*
GPU trainer for GPT-2 and LLaMA. Same configurations, parameter layout, checkpoints, data and
flags as the CPU reference train_gpt2.c (SPEC.md). BF16 weights and activations, FP32
accumulation, FP32 gradients and Adam moments, BF16 weights updated with stochastic rounding (or
an FP32 master copy, --master-fp32 1); attention on cuDNN's flash SDPA, or with --attn-core fp8
on our FP8 forward (llmc/attention_fp8.cuh) and cuDNN's backward. The block linears run in
the recipe's formats (llmc/recipe.h): BF16 GEMMs on cuBLASLt, or FP8 / FP4 codes with per-row
scales on the FP8 tensor cores (cuBLASLt OUTER_VEC_32F; on Hopper, GPT-2's fcproj dgrad runs our
own GEMM, llmc/gemm_fp8.cuh, with GELU's derivative and fc's gradient scales in its epilogue, and
its fc forward too, with the row maxima GELU's scales come from; forward GEMMs of 4-bit codes sum
in the tensor cores without FP32 promotion, --fast-accum), with
DGE for 4-bit weights and OCC for 4-bit activations (llmc/occ.cuh); tensor-wise scaling
(--scaling tensor, the naive-FP4 ablation) puts one scale in every row's slot. --quant-stats N
logs each quantized operand's error and the DGE norms (llmc/quant_error.cuh). Not on the GPU:
OCC with tensor-wise scaling, the fp32 recipe, Table 1's five activation settings (the CPU
trainer measures those on a checkpoint).
Data parallel over processes, one GPU each (llmc/dist.cuh): gradients averaged per layer while the
backward goes on, the optimizer state sharded over the ranks (ZeRO-1), updated weights all-gathered.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>
#include <errno.h>
#include <sys/stat.h>
#include "llmc/utils.h"
#include "llmc/rand.h"
#include "llmc/model.h"
#include "llmc/recipe.h"
#include "llmc/args.h"
#include "llmc/dataloader.h"
#include "llmc/tokenizer.h"
#include "llmc/checkpoint.h"
#include "llmc/schedulers.h"
#include "llmc/logger.h"
#include "llmc/run.h"
#include "llmc/cuda_common.cuh"
#include "llmc/matmul.cuh"
#include "llmc/norm.cuh"
#include "llmc/attention.cuh"
#include "llmc/activations.cuh"
#include "llmc/encoder.cuh"
#include "llmc/classifier.cuh"
#include "llmc/adamw.cuh"
#include "llmc/quantize.cuh"
#include "llmc/gemm_fp8.cuh"
#include "llmc/occ.cuh"
#include "llmc/quant_error.cuh"
#include "llmc/dist.cuh"

typedef struct {
    bf16 *encoded;               // (N, C) embedding: the residual stream into layer 0
    bf16 *ln1;                   // (L, N, C) norm output into qkv (none when qkv is quantized)
    float *ln1_mean, *ln1_rstd;  // (L, N)
    bf16 *qkv;                   // (L, N, QKV) qkv projection, q and k rotated (LLaMA)
    float *att_stats;            // (L, B, H, T) attention log-sum-exp, for the backward
    bf16 *atty;                  // (L, N, C) attention output into attproj
    bf16 *res2;                  // (L, N, C) residual stream after attention
    bf16 *ln2;                   // (L, N, C) norm output into fc (none when fc is quantized)
    float *ln2_mean, *ln2_rstd;  // (L, N)
    bf16 *fch;                   // (L, N, FF) fc output (before GELU / SwiGLU)
    bf16 *fch_act;               // (L, N, F) GELU / SwiGLU output into fcproj (none when quantized)
    bf16 *res3;                  // (L, N, C) residual stream after the MLP
    bf16 *lnf;                   // (N, C)
    float *lnf_mean, *lnf_rstd;  // (N)
    bf16 *logits;                // (N, Vp); dlogits after a training forward
    float *losses;               // (N)
    fp8 *xq[NUM_LINEARS];        // (L, K, N) input codes of each quantized linear, transposed for wgrad
    float *xs[NUM_LINEARS];      // (L, N) their per-token scales
    float2 *occ_bounds[NUM_LINEARS]; // (L, N) OCC: each row's clamp bounds (the backward makes R again from them)
} Acts;

// Reused layer after layer. (F): used by the blocks' forward only, (B): by their backward only;
// both sets live in the logits' memory, free before the LM head's forward and after its dgrad.
typedef struct {
    bf16 *dln;                   // (N, C) the LM head's dgrad, then each norm's output gradient
    float *partial;              // column-sum and norm partials; the gradient-norm partials
    fp8 *xcodes;                 // (F) (N, maxK) input codes for the forward GEMM
    bf16 *occ_dense;             // (F) (N, maxK) OCC: the residual R as a dense matrix, for the compensation's GEMM
    float *gelu_rowmax;          // (F) (N, tiles) fused_gelu_scales: fc output's row maxima by tile (RowSource.part)
    bf16 *dqkv;                  // (B) (N, QKV)
    bf16 *dres;                  // (B) (N, C) gradient of the residual stream
    bf16 *datty;                 // (B) (N, C)
    bf16 *dfch;                  // (B) (N, FF) fc's output gradient: a bf16 fc's, or the one fc's quantizer makes
                                 // for OCC's compensation (none otherwise: the quantizer applies the derivative)
    bf16 *dfch_act;              // (B) (N, F); with fused_dgelu, GELU's input's gradient (fc's output gradient)
    float *gpart;                // (B) fused_dgelu: fc's gradient's first pass, from fcproj's dgrad (RowSource.part)
    float *npart;                // (B) the residual gradient's first pass, from the norm's backward, for the
                                 // quantized attproj or fcproj that takes it next
    fp8 *gcodes, *gcodes_t[2];   // (B) (N, maxM) output-gradient codes per token (dgrad), (maxM, N) per output (wgrad):
    float *gscales, *gscales_t[2];  // (B) (N), (maxM) their scales. Two of wgrad's, used in turn: the
                                 // wgrad of the linear before may still be reading the other (wgrad_stream)
    fp8 *wcodes_t;               // (B) a layer's weight codes transposed for dgrad: each quantized linear's (K, M)
                                 // at wcodes_t_offset
    unsigned *amax;              // (B) (maxM) column absmax scratch
    bf16 *occ_dense_b;           // (B) (N, maxK) R dense again, for the compensation's weight gradient
    float *wgrad;                // (B) (max M * K) a micro-batch's quantized weight gradient, before DGE (dge_per_microbatch)
    unsigned char *att8_mem;     // (F) --attn-core fp8: the FP8 core's codes and scales (att8_bytes)
    Att8 att8;                   // laid out over att8_mem
} Scratch;

// What a step (or an evaluation) adds up on the device for the host to read: the mean loss of its
// micro-batches and the squared gradient norm. The training loop keeps two slots, so that the host
// queues step s + 1 before it waits for step s's (no host wait inside a step: the clipping factor
// is made on the device); an evaluation waits for its own.
typedef struct { double loss; float sumsq; } StepStats;
#define STATS_SLOTS 2

typedef struct {
    Config cfg;
    Recipe recipe;                // each block linear's formats (llmc/recipe.h)
    OccPlan occ[NUM_LINEARS];     // where OCC's quantiles sit in a linear's input rows
    size_t nparams;
    size_t off[NUM_PARAM_KINDS];  // element offset of each tensor in the buffers below
    Dist *dist;                   // the other ranks, or NULL
    int parts, part;              // ZeRO-1: the optimizer state in `parts` shards; this rank holds `part`
    size_t shard, lo, hi;         // shard >= nparams / parts, a multiple of 8; this rank's parameters [lo, hi)
    bf16 *params;                 // (parts * shard) the weights the kernels read (all of them, on every rank)
    float *grads;                 // (parts * shard) averaged over the ranks by the end of the backward
    float *master, *m, *v;        // (hi - lo) this rank's shard: FP32 master weights (or NULL), Adam's moments
    float *rope_cos, *rope_sin;   // (T, hd/2), LLaMA
    float *wscales_mem;           // the wscales, in one allocation
    size_t nwscales;
    float *wscales[NUM_LINEARS];  // (L, M) a quantized linear's weight scales per output channel
    fp8 *wcodes_mem;              // the wcodes, in one allocation
    size_t nwcodes;
    fp8 *wcodes[NUM_LINEARS];     // (L, M, K) its weight codes for the forward GEMM (the backward makes the
                                  // transposed copy per layer); scales and codes once per optimizer step
    int wq_stale;                 // weights changed since their scales and codes were made
    int qstats;                   // --quant-stats: the running forward + backward adds to qsums
    int deterministic;            // --deterministic: attention's backward in a fixed order
    int own_gemm;                 // --own-gemm: our FP8 GEMM with the quantizer in its epilogue, where it runs
    int wgrad_stream;             // --wgrad-stream: the weight gradients' work on lt_side_stream, beside the backward
    int fast_accum;               // --fast-accum: forward GEMMs of 4-bit codes sum in the tensor cores, no FP32 promotion
    int wgrad_delay_us;           // tests: that stream first sleeps this long for each linear, so that a missing wait shows
    int gbuf;                     // which of the scratch's gcodes_t the next quantized backward takes
    struct {                      // where a linear's weight-gradient work may start (on the main stream),
        cudaEvent_t start, gfree[2];  // where it has read gcodes_t[i],
        cudaEvent_t read[NUM_LINEARS];  // where each linear's has read its output gradient in BF16 (bf16, OCC's),
        cudaEvent_t done;         // and where all of it is done
    } wev;
    double *qsums;                // (L, NUM_LINEARS, QS_N) the quantized linears' telemetry sums
    float *ones;                  // (nones) unit scales, for GEMM operands that are exact codes
    int nones;
    int B, T;
    void *acts_mem;
    size_t acts_bytes;
    Acts acts;
    Scratch s;
    int *inputs, *targets;        // device (B, T)
    EncoderBuckets buckets;       // encoder backward
    const int *host_inputs;       // of the last forward
    StepStats *stats;             // (STATS_SLOTS) device: what the running step adds up (model_stats_begin)
    StepStats *host_stats;        // (STATS_SLOTS) pinned: their copies (model_stats_end)
    int slot;                     // the running step's
    cudaStream_t stream;
} Model;

#define PARAM(m, kind) ((m)->params + (m)->off[kind])
#define GRAD(m, kind) ((m)->grads + (m)->off[kind])

static int quantized(const Model *m, int lin) { return m->recipe.lin[lin].f.x != FMT_BF16; }
// a forward GEMM --fast-accum applies to: products of 4-bit codes, whose sums are short
static int fast_accum_fits(const OperandFormats *f) { return format_is_fp4(f->x) && format_is_fp4(f->w); }

// waits for the model's stream (through the watchdog when there are other ranks)
static void model_wait(Model *m) { dist_sync(m->dist, m->stream); }

// uploads FP32 parameters (file order) as BF16 weights, and this rank's shard as the master copy if kept
static void model_set_params(Model *m, const float *params) {
    bf16 *tmp = (bf16 *)malloc_check(m->nparams * sizeof(bf16));
    for (size_t i = 0; i < m->nparams; i++) tmp[i] = __float2bfloat16(params[i]);
    cuda_upload(m->params, tmp, m->nparams * sizeof(bf16));
    free(tmp);
    if (m->master) cuda_upload(m->master, params + m->lo, (m->hi - m->lo) * sizeof(float));
    m->wq_stale = 1;
}

// FP32 parameters (file order) of the model: the master copy, or the BF16 weights widened. A
// sharded master copy is gathered in the gradient buffer (so: between steps, on every rank);
// params NULL: this rank only takes part in that.
static void model_get_params(Model *m, float *params) {
    if (m->master && m->parts > 1) {
        CUDA_CHECK(cudaMemcpyAsync(m->grads + m->lo, m->master, (m->hi - m->lo) * sizeof(float), cudaMemcpyDeviceToDevice, m->stream));
        dist_all_gather(m->dist, m->grads, m->shard, 4, m->stream);
        model_wait(m);
        if (params) cuda_download(params, m->grads, m->nparams * sizeof(float));
    } else if (params && m->master) {
        cuda_download(params, m->master, m->nparams * sizeof(float));
    } else if (params) {
        bf16 *tmp = (bf16 *)malloc_check(m->nparams * sizeof(bf16));
        cuda_download(tmp, m->params, m->nparams * sizeof(bf16));
        for (size_t i = 0; i < m->nparams; i++) params[i] = __bfloat162float(tmp[i]);
        free(tmp);
    }
}

// what the GPU runs of the recipe table: bf16, fp8, fp4; tensor-wise scaling without OCC
static Recipe gpu_recipe(const RecipeOptions *o) {
    if (strcmp(recipe_table[o->recipe].name, "fp32") == 0) die("the fp32 recipe runs on the CPU only (train_gpt2); the GPU runs bf16, fp8, fp4");
    Recipe r = recipe_resolve(o);
    for (int l = 0; l < NUM_LINEARS; l++)
        if (r.tensorwise && r.lin[l].occ) die("--scaling tensor runs with --occ 0 on the GPU (the CPU trainer has both)");
    return r;
}

static int occ_on(const Model *m, int lin) { return m->recipe.lin[lin].occ; }
// OCC's exact compensation: BF16 GEMMs beside the quantized ones (else none, or in the codes)
static int occ_comp(const Model *m, int lin) { return occ_on(m, lin) && m->recipe.occ_comp == OCC_COMP_BF16; }

// DGE's factor multiplies the quantized GEMM's weight gradient only. Where OCC's compensation adds
// its own (exact) gradient beside it, DGE applies to each micro-batch's quantized gradient as it
// joins the step's sum, and the compensation's GEMM adds straight into the sum; elsewhere once, to
// the step's sum as the norm and AdamW read it (model_dge): the same factor for every micro-batch.
static int dge_per_microbatch(const Model *m, int lin) { return m->recipe.lin[lin].dge && occ_comp(m, lin); }

// OCC's state for linear lin of layer l: that layer's bounds (none without OCC: no memory for
// them), dense the pass's scratch for R (exact compensation only)
static Occ occ_state(const Model *m, int lin, int l, bf16 *dense) {
    Occ o = { m->occ[lin], NULL, occ_comp(m, lin) ? dense : NULL, occ_on(m, lin) && m->recipe.occ_comp == OCC_COMP_OPERAND };
    if (occ_on(m, lin)) o.bounds = m->acts.occ_bounds[lin] + (size_t)l * m->B * m->T;
    return o;
}

// GPT-2's fcproj dgrad on our GEMM (llmc/gemm_fp8.cuh), GELU's derivative and the first pass of
// fc's gradient quantization in its epilogue: fc's backward then runs only the codes pass. Needs
// both linears quantized and E4M3 operands (the kernel's wgmma).
static int fused_dgelu(const Model *m) {
    const OperandFormats *f = &m->recipe.lin[LIN_FCPROJ].f;
    return m->own_gemm && m->cfg.arch == ARCH_GPT2 && quantized(m, LIN_FC) && quantized(m, LIN_FCPROJ) && f->g == FMT_E4M3 &&
           fp8_type(f->w) == CUDA_R_8F_E4M3;
}

// GPT-2's fc forward on our GEMM (sums in the tensor cores, as --fast-accum has cuBLASLt's), its
// epilogue adding the bias and keeping each row's largest output by tile: fcproj's quantizer takes
// GELU's scales from those and skips its pass over the rows for them. Without OCC on either: fc's
// compensation would change its output after the GEMM, fcproj's bounds need a pass of their own.
static int fused_gelu_scales(const Model *m) {
    return m->own_gemm && m->fast_accum && m->cfg.arch == ARCH_GPT2 && quantized(m, LIN_FC) && quantized(m, LIN_FCPROJ) &&
           fast_accum_fits(&m->recipe.lin[LIN_FC].f) && !occ_on(m, LIN_FC) && !occ_on(m, LIN_FCPROJ);
}

// d: the other ranks (NULL: none); zero: shard the optimizer state over them
static void model_create(Model *m, const Config *c, const Recipe *r, int master_fp32, Dist *d, int zero) {
    memset(m, 0, sizeof(*m));
    m->cfg = *c;
    m->recipe = *r;
    m->dist = d;
    if (r->attn_fp8 && config_hd(c) != 64 && config_hd(c) != 128)
        die("--attn-core fp8 runs head dims 64 and 128 (this model's is %d)", config_hd(c));
    for (int l = 0; l < NUM_LINEARS; l++) {
        int M, K; linear_dims(c, l, &M, &K);
        if (r->lin[l].occ) m->occ[l] = occ_plan(K, r->occ_alpha);
    }
    m->nparams = param_count(c);
    const ParamKind *order; int n = param_order(c, &order);
    size_t off = 0; int shape[3];
    for (int i = 0; i < NUM_PARAM_KINDS; i++) m->off[i] = (size_t)-1;
    for (int i = 0; i < n; i++) { m->off[order[i]] = off; off += param_shape(c, order[i], shape); }
    size_t np = m->nparams;
    m->parts = d && zero ? d->world : 1;
    m->part = d && zero ? d->rank : 0;
    m->shard = ((np + m->parts - 1) / m->parts + 7) / 8 * 8;  // whole 16-byte words of BF16 (the replica check reads those)
    m->lo = (size_t)m->part * m->shard < np ? (size_t)m->part * m->shard : np;
    m->hi = m->lo + m->shard < np ? m->lo + m->shard : np;
    size_t padded = (size_t)m->parts * m->shard, own = m->hi - m->lo;
    m->params = (bf16 *)cuda_malloc(padded * sizeof(bf16));
    m->grads = (float *)cuda_malloc(padded * sizeof(float));
    CUDA_CHECK(cudaMemset(m->params, 0, padded * sizeof(bf16)));  // the padding stays zero
    m->master = master_fp32 ? (float *)cuda_malloc(own * sizeof(float)) : NULL;
    m->m = (float *)cuda_malloc(own * sizeof(float));
    m->v = (float *)cuda_malloc(own * sizeof(float));
    CUDA_CHECK(cudaMemset(m->m, 0, own * sizeof(float)));
    CUDA_CHECK(cudaMemset(m->v, 0, own * sizeof(float)));
    m->stats = (StepStats *)cuda_malloc(STATS_SLOTS * sizeof(StepStats));
    CUDA_CHECK(cudaMemset(m->stats, 0, STATS_SLOTS * sizeof(StepStats)));
    CUDA_CHECK(cudaMallocHost(&m->host_stats, STATS_SLOTS * sizeof(StepStats)));
    m->slot = 0;
    m->qstats = 0;
    m->deterministic = 1;  // main sets --deterministic, --own-gemm, --wgrad-stream and --fast-accum
    m->own_gemm = fp8_gemm_supported();
    m->wgrad_stream = 1;
    m->fast_accum = 1;
    m->qsums = (double *)cuda_malloc((size_t)c->L * NUM_LINEARS * QS_N * sizeof(double));
    int hd = config_hd(c);
    float *cs = (float *)malloc_check((size_t)c->T * hd * sizeof(float)), *sn = cs + (size_t)c->T * hd / 2;
    for (int t = 0; t < c->T; t++) {
        for (int i = 0; i < hd / 2; i++) {
            double angle = t * pow(c->rope_theta, -2.0 * i / hd);
            cs[t * hd / 2 + i] = (float)cos(angle);
            sn[t * hd / 2 + i] = (float)sin(angle);
        }
    }
    m->rope_cos = (float *)cuda_malloc((size_t)c->T * hd * sizeof(float));
    m->rope_sin = m->rope_cos + (size_t)c->T * hd / 2;
    cuda_upload(m->rope_cos, cs, (size_t)c->T * hd * sizeof(float));
    free(cs);
    // the quantized linears' weight scales and codes
    size_t wo[NUM_LINEARS], co[NUM_LINEARS];
    int maxMK = 0;
    m->nwscales = m->nwcodes = 0;
    for (int l = 0; l < NUM_LINEARS; l++) {
        int M, K; linear_dims(c, l, &M, &K);
        if (M + K > maxMK) maxMK = M + K;
        wo[l] = m->nwscales;
        co[l] = m->nwcodes;
        if (quantized(m, l)) { m->nwscales += (size_t)c->L * M; m->nwcodes += (size_t)c->L * M * K; }
    }
    m->wscales_mem = m->nwscales ? (float *)cuda_malloc(m->nwscales * sizeof(float)) : NULL;
    m->wcodes_mem = m->nwcodes ? (fp8 *)cuda_malloc(m->nwcodes) : NULL;
    for (int l = 0; l < NUM_LINEARS; l++) {
        m->wscales[l] = quantized(m, l) ? m->wscales_mem + wo[l] : NULL;
        m->wcodes[l] = quantized(m, l) ? m->wcodes_mem + co[l] : NULL;
    }
    m->nones = maxMK;
    m->ones = (float *)cuda_malloc(maxMK * sizeof(float));
    float *ones = (float *)malloc_check(maxMK * sizeof(float));
    for (int i = 0; i < maxMK; i++) ones[i] = 1.0f;
    cuda_upload(m->ones, ones, maxMK * sizeof(float));
    free(ones);
    m->wq_stale = 1;
    CUDA_CHECK(cudaStreamCreate(&m->stream));
    cudaEvent_t *ev = (cudaEvent_t *)&m->wev;
    for (size_t i = 0; i < sizeof(m->wev) / sizeof(*ev); i++) CUDA_CHECK(cudaEventCreateWithFlags(&ev[i], cudaEventDisableTiming));
}

static void model_free_acts(Model *m) {
    if (!m->acts_mem) return;
    size_t N = (size_t)m->B * m->T;
    cuda_free(m->acts_mem, m->acts_bytes);
    cuda_free(m->inputs, 2 * N * sizeof(int));
    encoder_buckets_free(&m->buckets);
    m->acts_mem = NULL;
}

// where linear lin's transposed weight codes sit in the backward's wcodes_t (lin NUM_LINEARS: its size)
static size_t wcodes_t_offset(const Model *m, int lin) {
    size_t off = 0;
    for (int l = 0; l < lin; l++) {
        int M, K; linear_dims(&m->cfg, l, &M, &K);
        if (quantized(m, l)) off += (size_t)M * K;
    }
    return off;
}

// activation and scratch buffers for batches of B x T, in one allocation
static void model_alloc_acts(Model *m, int B, int T) {
    if (m->B == B && m->T == T) return;
    model_free_acts(m);
    const Config *c = &m->cfg;
    size_t N = (size_t)B * T, L = c->L, C = c->C, QKV = config_qkv(c), FF = config_ff(c), F = c->F, H = c->H;
    size_t Vp = c->Vp, maxM = 0, maxK = 0;
    for (int l = 0; l < NUM_LINEARS; l++) {
        int M, K; linear_dims(c, l, &M, &K);
        if ((size_t)M > maxM) maxM = M;
        if ((size_t)K > maxK) maxK = K;
        if (quantized(m, l) && N % 16 != 0) die("FP8/FP4 linears need B * T to be a multiple of 16 (it is %zu)", N);
    }
    size_t partial = (N / 64 + 1) * maxM;  // column_sum's, for the biases of linears
    if ((N / NORM_ROWS + 1) * 2 * C > partial) partial = (N / NORM_ROWS + 1) * 2 * C;
    if (quantize_grad_scratch(N, maxM, 1) > partial) partial = quantize_grad_scratch(N, maxM, 1);  // a gradient's first pass
    if (partial < SUMSQ_BLOCKS) partial = SUMSQ_BLOCKS;  // the gradient norm's
    // a quantized linear makes its input rows on the fly and keeps their codes: no BF16 copy
    size_t Lqkv = quantized(m, LIN_QKV) ? 0 : L, Lfc = quantized(m, LIN_FC) ? 0 : L, Lproj = quantized(m, LIN_FCPROJ) ? 0 : L;
    int anyq = 0;
    size_t anycomp = 0, maxmk = 0;
    // buffers at offsets of one allocation; SHARE() starts another layout of the shared span
    // [lo, hi), laid out again from lo
    struct { void **ptr; size_t off; } a[96];
    int na = 0;
    size_t at = 0, lo = 0, hi = 0;
#define BUF(p, count) (na < 96 ? (void)0 : die("model_alloc_acts: more than 96 buffers"), a[na].ptr = (void **)&(p), \
                       a[na].off = at, at += ((count) * sizeof(*(p)) + 255) / 256 * 256, na++)
#define SHARE() (hi = at > hi ? at : hi, at = lo)
    Acts *x = &m->acts;
    BUF(x->encoded, N * C);
    BUF(x->ln1, Lqkv * N * C); BUF(x->ln1_mean, L * N); BUF(x->ln1_rstd, L * N);
    BUF(x->qkv, L * N * QKV); BUF(x->att_stats, L * N * H); BUF(x->atty, L * N * C); BUF(x->res2, L * N * C);
    BUF(x->ln2, Lfc * N * C); BUF(x->ln2_mean, L * N); BUF(x->ln2_rstd, L * N);
    BUF(x->fch, L * N * FF); BUF(x->fch_act, Lproj * N * F); BUF(x->res3, L * N * C);
    BUF(x->lnf, N * C); BUF(x->lnf_mean, N); BUF(x->lnf_rstd, N);
    BUF(x->losses, N);
    for (int l = 0; l < NUM_LINEARS; l++) {
        if (!quantized(m, l)) { x->xq[l] = NULL; x->xs[l] = NULL; continue; }
        int M, K; linear_dims(c, l, &M, &K);
        BUF(x->xq[l], L * K * N); BUF(x->xs[l], L * N);
        anyq = 1;
        size_t occ = occ_on(m, l);
        anycomp |= occ_comp(m, l);
        if (dge_per_microbatch(m, l) && (size_t)M * K > maxmk) maxmk = (size_t)M * K;
        BUF(x->occ_bounds[l], occ * L * N);
    }
    Scratch *s = &m->s;
    BUF(s->dln, N * C); BUF(s->partial, partial);
    // the logits live from the LM head's forward to its dgrad: the blocks' forward scratch before,
    // their backward scratch after, in the same memory
    lo = at;
    BUF(x->logits, N * Vp);
    SHARE();
    BUF(s->xcodes, anyq ? N * maxK : 0);
    BUF(s->occ_dense, anycomp * N * maxK);
    BUF(s->gelu_rowmax, fused_gelu_scales(m) ? N * fp8_gemm_tiles_n(F) : 0);
    BUF(s->att8_mem, m->recipe.attn_fp8 ? att8_bytes(B, T, c->H, c->KV, config_hd(c)) : 0);
    SHARE();
    int fc_grad = !quantized(m, LIN_FC) || (occ_comp(m, LIN_FC) && !fused_dgelu(m));
    BUF(s->dqkv, N * QKV); BUF(s->dres, N * C); BUF(s->datty, N * C); BUF(s->dfch, (fc_grad ? N : 0) * FF);
    BUF(s->dfch_act, N * F);
    if (anyq) {
        BUF(s->gcodes, N * maxM); BUF(s->gcodes_t[0], N * maxM); BUF(s->gcodes_t[1], N * maxM); BUF(s->gscales, N);
        BUF(s->gscales_t[0], maxM); BUF(s->gscales_t[1], maxM); BUF(s->wcodes_t, wcodes_t_offset(m, NUM_LINEARS));
        BUF(s->amax, maxM);
    }
    BUF(s->occ_dense_b, anycomp * N * maxK); BUF(s->wgrad, maxmk);
    BUF(s->gpart, fused_dgelu(m) ? grad_part_floats(N, F, fp8_gemm_tiles_n(F), GEMM_PART_ROWS) : 0);
    BUF(s->npart, quantized(m, LIN_ATTPROJ) || quantized(m, LIN_FCPROJ) ? grad_part_floats(N, C, 1, NORM_ROWS) : 0);
    SHARE();
#undef SHARE
#undef BUF
    m->acts_mem = cuda_malloc(hi);
    m->acts_bytes = hi;
    for (int i = 0; i < na; i++) *a[i].ptr = (char *)m->acts_mem + a[i].off;
    if (m->recipe.attn_fp8) att8_carve(&s->att8, s->att8_mem, B, T, c->H, c->KV, config_hd(c));
    m->inputs = (int *)cuda_malloc(2 * N * sizeof(int));
    m->targets = m->inputs + N;
    encoder_buckets_create(&m->buckets, (int)N);
    m->B = B; m->T = T;
}

// ---------------------------------------------------------------------------------------------
// a block linear in its recipe's formats (SPEC.md 4)

// the weight scales of every low-precision linear, per output channel, and the forward's codes,
// once per optimizer step. One launch of each covers a linear's rows in every layer, but for
// tensor-wise scales (one per layer): made per layer, a weight's few row blocks left the GPU
// mostly idle, ~9 us a launch for ~1 us of bytes (one launch a linear took 0.35 ms a step off
// GPT-2 124M). Their memory (721 MB at llama:d16) stays under bf16's peak; a second, transposed
// copy would not: the dgrad's are these codes transposed per layer (model_weight_codes_t).
static void model_weight_scales(Model *m) {
    const Config *c = &m->cfg;
    int layers = m->recipe.tensorwise ? 1 : c->L;  // a launch's
    for (int l = 0; l < NUM_LINEARS; l++) {
        if (!quantized(m, l)) continue;
        int M, K; linear_dims(c, l, &M, &K);
        for (int layer = 0; layer < c->L; layer += layers) {
            RowSource w = rows_plain(PARAM(m, linear_wkind[l]) + (size_t)layer * M * K);
            quantize_rows(m->wcodes[l] + (size_t)layer * M * K, NULL, m->wscales[l] + (size_t)layer * M, &w, layers * M, K,
                          m->recipe.lin[l].f.w, m->recipe.tensorwise, m->stream);
        }
    }
    m->wq_stale = 0;
}

// the rows a BF16 linear reads, in BF16: a norm's or SwiGLU's output is written to src->out; GELU's
// is there already (the fc GEMM's epilogue wrote it)
static const bf16 *rows_materialize(Model *m, const RowSource *src, int N, int K) {
    switch (src->op) {
        case ROWS_NORM: norm_forward(src->out, src->mean, src->rstd, src->x, src->w, src->b, N, K, src->eps, m->stream); return src->out;
        case ROWS_SWIGLU: swiglu_forward(src->out, src->x, N, K, m->stream); return src->out;
        case ROWS_GELU: return src->out;
        default: return src->x;
    }
}

// the rows each block linear of layer l reads, as the forward makes them; the backward's OCC
// makes its R again from them, and a bf16 linear's wgrad reads their BF16 copy. A quantized
// linear's BF16 copy is never written (stride 0 into an empty buffer).
static void block_inputs(Model *m, int l, RowSource in[NUM_LINEARS]) {
    const Config *c = &m->cfg;
    Acts *a = &m->acts;
    size_t N = (size_t)m->B * m->T, C = c->C, lc = (size_t)l * N * C, lf = (size_t)l * N * c->F;
    int gpt2 = c->arch == ARCH_GPT2;
    const bf16 *res = l == 0 ? a->encoded : a->res3 + lc - N * C;
    in[LIN_QKV] = rows_norm(res, PARAM(m, P_LN1W) + (size_t)l * C, gpt2 ? PARAM(m, P_LN1B) + (size_t)l * C : NULL,
                            gpt2 ? a->ln1_mean + (size_t)l * N : NULL, a->ln1_rstd + (size_t)l * N, c->norm_eps,
                            a->ln1 + !quantized(m, LIN_QKV) * lc);
    in[LIN_ATTPROJ] = rows_plain(a->atty + lc);
    in[LIN_FC] = rows_norm(a->res2 + lc, PARAM(m, P_LN2W) + (size_t)l * C, gpt2 ? PARAM(m, P_LN2B) + (size_t)l * C : NULL,
                           gpt2 ? a->ln2_mean + (size_t)l * N : NULL, a->ln2_rstd + (size_t)l * N, c->norm_eps,
                           a->ln2 + !quantized(m, LIN_FC) * lc);
    in[LIN_FCPROJ] = rows_act(gpt2 ? ROWS_GELU : ROWS_SWIGLU, a->fch + (size_t)l * N * config_ff(c),
                              a->fch_act + !quantized(m, LIN_FCPROJ) * lf);
}

// y (N, M) = x (N, K) W^T + b (+ residual) for linear lin of layer l, x the rows of src. With pre:
// pre = x W^T + b and y = gelu(pre), in the GEMM's epilogue; a quantized linear writes only pre
// (the next linear's quantizer applies GELU). A quantized linear keeps its input's codes,
// transposed, and scales for the backward; with OCC the input is clamped, R W^T added to the
// output, and the rows' clamp bounds kept (the backward makes R again from them).
static void linear_forward(Model *m, int lin, int l, bf16 *y, bf16 *pre, const RowSource *src, const bf16 *residual, int N) {
    const Config *c = &m->cfg;
    int M, K; linear_dims(c, lin, &M, &K);
    const bf16 *W = PARAM(m, linear_wkind[lin]) + (size_t)l * M * K;
    const bf16 *b = c->arch == ARCH_GPT2 ? PARAM(m, linear_bkind[lin]) + (size_t)l * M : NULL;
    cudaStream_t st = m->stream;
    if (!quantized(m, lin)) { matmul_forward(y, rows_materialize(m, src, N, K), W, b, residual, pre, N, K, M, st); return; }
    const OperandFormats *f = &m->recipe.lin[lin].f;
    float *xs = m->acts.xs[lin] + (size_t)l * N;
    fp8 *xq = m->acts.xq[lin] + (size_t)l * K * N;
    Scratch *s = &m->s;
    Occ o = occ_state(m, lin, l, s->occ_dense);
    if (occ_on(m, lin)) occ_quantize_rows(s->xcodes, xq, xs, src, N, f->x, &o, st);
    else quantize_rows(s->xcodes, xq, xs, src, N, K, f->x, m->recipe.tensorwise, st);
    const float *sw = m->wscales[lin] + (size_t)l * M;
    const fp8 *wq = m->wcodes[lin] + (size_t)l * M * K;
    if (m->qstats) {  // the codes against the rows they stand for (OCC: the residual added back)
        double *qs = m->qsums + ((size_t)l * NUM_LINEARS + lin) * QS_N;
        quant_error_sums(qs + QS_X, src, s->xcodes, xs, NULL, occ_on(m, lin) ? o.bounds : NULL, occ_comp(m, lin), N, K, f->x, st);
        RowSource w = rows_plain(W);
        quant_error_sums(qs + QS_W, &w, wq, sw, NULL, NULL, 0, M, K, f->w, st);
    }
    if (lin == LIN_FC && fused_gelu_scales(m)) {
        GemmFp8 p = { xs, sw, N, M, K, NULL, NULL, NULL, 1, b, s->gelu_rowmax };
        fp8_gemm(pre, s->xcodes, wq, NULL, &p, st);
    } else {
        int fast = m->fast_accum && fast_accum_fits(f);
        matmul_fp8(pre ? pre : y, CUDA_R_16BF, wq, fp8_type(f->w), sw, s->xcodes, fp8_type(f->x), xs, M, N, K, residual,
                   residual ? 1.0f : 0.0f, b, NULL, b ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT, fast, st);
    }
    if (!occ_comp(m, lin)) return;
    occ_compensate(pre ? pre : y, &o, W, N, M, K, st);
}

// A linear's weight-gradient work (its wgrad, OCC's compensation gradient, DGE per micro-batch,
// telemetry) reads only what the main stream has made by now, and only it writes dW. With
// wgrad_stream it runs on lt_side_stream, beside the rest of the backward, whose kernels fill the
// SMs it leaves idle: cuBLASLt's FP8 GEMMs have no split-K, and GPT-2 124M's four wgrads have 36
// to 144 output tiles of 128 x 128 for 132 SMs (+2% a step there, bf16 +1%: dev/NOTES.md). The main
// stream waits for it before it rewrites what it reads: gcodes_t (gfree), the output gradient
// (wgrad_fence, in model_backward), the input codes (the next forward: the end of model_backward).
__global__ void sleep_kernel(int us) { for (int i = 0; i < us; i++) __nanosleep(1000); }
static cudaStream_t wgrad_begin(Model *m) {
    if (!m->wgrad_stream) return m->stream;
    CUDA_CHECK(cudaEventRecord(m->wev.start, m->stream));
    CUDA_CHECK(cudaStreamWaitEvent(lt_side_stream, m->wev.start, 0));
    if (m->wgrad_delay_us) sleep_kernel<<<1, 1, 0, lt_side_stream>>>(m->wgrad_delay_us);
    return lt_side_stream;
}
// the main stream is about to rewrite the output-gradient buffer linear lin's backward read
static void wgrad_fence(Model *m, int lin) { CUDA_CHECK(cudaStreamWaitEvent(m->stream, m->wev.read[lin], 0)); }

// dx (N, K) = dy (N, M) W, times gelu'(pre) when pre is given; dW += dy^T x, db += sum of dy.
// x the rows of in, the forward's input (a bf16 linear reads their BF16 copy, OCC makes R again
// from them), dy the rows of src: a bf16 linear takes them as they are; a quantized one may make
// them from the next nonlinearity's gradient (dGELU, dSWIGLU). Quantized (SPEC.md 4): dgrad
// contracts dy * s_w quantized per token with the weight codes, wgrad dy * s_x quantized per
// output channel with the input codes; the bias gradient comes from the quantizer's first pass.
// OCC's residual adds its own exact gradient dy^T R, and DGE then scales the quantized part here
// (dge_per_microbatch); otherwise DGE comes in model_update. The weight gradient's work runs on
// wgrad_begin's stream.
static void linear_backward(Model *m, int lin, int l, bf16 *dx, const RowSource *src, const RowSource *in, const bf16 *pre, int N) {
    const Config *c = &m->cfg;
    int M, K; linear_dims(c, lin, &M, &K);
    const bf16 *W = PARAM(m, linear_wkind[lin]) + (size_t)l * M * K;
    float *dW = GRAD(m, linear_wkind[lin]) + (size_t)l * M * K;
    float *db = c->arch == ARCH_GPT2 ? GRAD(m, linear_bkind[lin]) + (size_t)l * M : NULL;
    cudaStream_t st = m->stream, ws;
    Scratch *s = &m->s;
    if (!quantized(m, lin)) {
        if (src->op != ROWS_PLAIN) die("linear_backward: a bf16 linear takes its gradient materialized");
        matmul_dgrad(dx, src->x, W, pre, N, M, K, st);
        if (db) column_sum(db, src->x, s->partial, N, M, st);
        ws = wgrad_begin(m);
        matmul_wgrad(dW, src->x, in->op == ROWS_PLAIN ? in->x : in->out, N, M, K, 1.0f, ws);
        CUDA_CHECK(cudaEventRecord(m->wev.read[lin], ws));
        return;
    }
    const OperandFormats *f = &m->recipe.lin[lin].f;
    const float *sw = m->wscales[lin] + (size_t)l * M, *xs = m->acts.xs[lin] + (size_t)l * N;
    int comp = occ_comp(m, lin), dge_now = dge_per_microbatch(m, lin);
    RowSource g = *src;  // OCC's compensation gradient takes a nonlinearity's gradient materialized
    if (comp && g.op != ROWS_PLAIN) g.out = s->dfch;
    int b = m->gbuf;
    m->gbuf ^= 1;
    CUDA_CHECK(cudaStreamWaitEvent(st, m->wev.gfree[b], 0));  // the wgrad two linears back has read gcodes_t[b]
    quantize_grad(s->gcodes, s->gscales, s->gcodes_t[b], s->gscales_t[b], &g, sw, xs, N, M, f->g, m->recipe.tensorwise, s->amax,
                  db, s->partial, st);
    double *qs = m->qsums + ((size_t)l * NUM_LINEARS + lin) * QS_N;
    if (m->qstats) quant_error_sums(qs + QS_G, src, s->gcodes, s->gscales, sw, NULL, 0, N, M, f->g, st);  // the dgrad operand
    const fp8 *wq_t = s->wcodes_t + wcodes_t_offset(m, lin);  // model_weight_codes_t's
    if (pre && fused_dgelu(m)) {  // lin is fcproj: GELU's derivative and fc's gradient's first pass in the epilogue
        GemmFp8 p = { s->gscales, m->ones, N, K, M, m->acts.xs[LIN_FC] + (size_t)l * N, m->wscales[LIN_FC] + (size_t)l * K, s->gpart };
        fp8_gemm(dx, s->gcodes, wq_t, pre, &p, st);
    } else matmul_fp8(dx, CUDA_R_16BF, wq_t, fp8_type(f->w), m->ones, s->gcodes, fp8_type(f->g), s->gscales, K, N, M, NULL,
                      0.0f, NULL, pre, pre ? CUBLASLT_EPILOGUE_DGELU : CUBLASLT_EPILOGUE_DEFAULT, 0, st);
    float *wg = dge_now ? s->wgrad : dW;
    ws = wgrad_begin(m);
    matmul_fp8(wg, CUDA_R_32F, m->acts.xq[lin] + (size_t)l * K * N, fp8_type(f->x), m->ones, s->gcodes_t[b], fp8_type(f->g),
               s->gscales_t[b], K, M, N, NULL, dge_now ? 0.0f : 1.0f, NULL, NULL, CUBLASLT_EPILOGUE_DEFAULT, 0, ws);
    CUDA_CHECK(cudaEventRecord(m->wev.gfree[b], ws));
    if (m->qstats)  // wg is this micro-batch's quantized GEMM alone (dW: the first of the step)
        dge_norm_sums(qs + QS_DW, wg, W, sw, M, K, f->w, m->recipe.lin[lin].dge ? m->recipe.dge_k : 0.0f, ws);
    if (!comp) return;  // the rest reads the output gradient in BF16
    Occ o = occ_state(m, lin, l, s->occ_dense_b);
    occ_compensate_grad(dW, &o, in, g.op == ROWS_PLAIN ? g.x : g.out, N, M, K, ws);
    if (dge_now) dge_apply(dW, wg, W, sw, M, K, f->w, m->recipe.dge_k, ws);
    CUDA_CHECK(cudaEventRecord(m->wev.read[lin], ws));
}

// ---------------------------------------------------------------------------------------------
// forward and backward, chained by hand

// targets NULL: logits only (waits for them). Otherwise adds loss_weight x the batch's mean loss to
// the running step's StepStats, and with grad_scale > 0 leaves dlogits = grad_scale * d(mean
// loss)/dlogits in place of the logits for model_backward; does not wait.
static void model_forward(Model *m, const int *inputs, const int *targets, int B, int T, float grad_scale, double loss_weight) {
    const Config *c = &m->cfg;
    if (T > c->T) die("sequence length %d exceeds the model's maximum %d", T, c->T);
    model_alloc_acts(m, B, T);
    int N = B * T, C = c->C, QKV = config_qkv(c), FF = config_ff(c), hd = config_hd(c);
    int gpt2 = c->arch == ARCH_GPT2;
    for (int i = 0; i < N; i++) {
        if (inputs[i] < 0 || inputs[i] >= c->V || (targets && (targets[i] < 0 || targets[i] >= c->V)))
            die("token id out of range at position %d", i);
    }
    cudaStream_t st = m->stream;
    if (m->wq_stale) model_weight_scales(m);
    CUDA_CHECK(cudaMemcpyAsync(m->inputs, inputs, N * sizeof(int), cudaMemcpyHostToDevice, st));
    if (targets) CUDA_CHECK(cudaMemcpyAsync(m->targets, targets, N * sizeof(int), cudaMemcpyHostToDevice, st));
    m->host_inputs = inputs;
    Acts *a = &m->acts;
    const float *cs = gpt2 ? NULL : m->rope_cos, *sn = gpt2 ? NULL : m->rope_sin;
    encoder_forward(a->encoded, m->inputs, PARAM(m, P_WTE), gpt2 ? PARAM(m, P_WPE) : NULL, B, T, C, st);
    for (int l = 0; l < c->L; l++) {
        const bf16 *res = l == 0 ? a->encoded : a->res3 + (size_t)(l - 1) * N * C;
        size_t lc = (size_t)l * N * C;
        bf16 *atty = a->atty + lc, *res2 = a->res2 + lc, *res3 = a->res3 + lc, *fch = a->fch + (size_t)l * N * FF;
        bf16 *qkv = a->qkv + (size_t)l * N * QKV;
        float *stats = targets ? a->att_stats + (size_t)l * N * c->H : NULL;
        RowSource in[NUM_LINEARS];
        block_inputs(m, l, in);
        if (fused_gelu_scales(m)) {  // this layer's, until the next fc forward (so not in block_inputs)
            in[LIN_FCPROJ].part = m->s.gelu_rowmax;
            in[LIN_FCPROJ].part_tiles = fp8_gemm_tiles_n(FF);
        }
        linear_forward(m, LIN_QKV, l, qkv, NULL, &in[LIN_QKV], NULL, N);
        attention_forward(atty, stats, qkv, cs, sn, m->recipe.attn_fp8 ? &m->s.att8 : NULL, B, T, c->H, c->KV, hd, st);
        linear_forward(m, LIN_ATTPROJ, l, res2, NULL, &in[LIN_ATTPROJ], res, N);
        // GPT-2's fc writes GELU's output (fcproj's BF16 input) and keeps its input in fch
        linear_forward(m, LIN_FC, l, gpt2 ? in[LIN_FCPROJ].out : fch, gpt2 ? fch : NULL, &in[LIN_FC], NULL, N);
        linear_forward(m, LIN_FCPROJ, l, res3, NULL, &in[LIN_FCPROJ], res2, N);
    }
    const bf16 *res = a->res3 + (size_t)(c->L - 1) * N * C;
    norm_forward(a->lnf, gpt2 ? a->lnf_mean : NULL, a->lnf_rstd, res, PARAM(m, P_LNFW), gpt2 ? PARAM(m, P_LNFB) : NULL,
                 N, C, c->norm_eps, st);
    matmul_forward(a->logits, a->lnf, PARAM(m, gpt2 ? P_WTE : P_LMHEAD), NULL, NULL, NULL, N, C, c->Vp, st);
    if (!targets) { model_wait(m); return; }
    classifier_forward_backward(a->logits, a->losses, m->targets, grad_scale / N, N, c->V, c->Vp, st);
    loss_mean_add(&m->stats[m->slot].loss, a->losses, N, loss_weight, st);
}

// a step's (or an evaluation's) StepStats start at zero in slot; the forwards and the update add to them
static void model_stats_begin(Model *m, int slot) {
    m->slot = slot;
    CUDA_CHECK(cudaMemsetAsync(m->stats + slot, 0, sizeof(StepStats), m->stream));
}
// their copy to the host, in the stream's order: read host_stats[slot] once the GPU has passed here
static void model_stats_end(Model *m) {
    CUDA_CHECK(cudaMemcpyAsync(m->host_stats + m->slot, m->stats + m->slot, sizeof(StepStats), cudaMemcpyDeviceToHost, m->stream));
}
// the same, waiting for them
static StepStats model_stats_wait(Model *m) {
    model_stats_end(m);
    model_wait(m);
    return m->host_stats[m->slot];
}

static void model_zero_grad(Model *m) { CUDA_CHECK(cudaMemsetAsync(m->grads, 0, m->nparams * sizeof(float), m->stream)); }

// the gradients of a group of tensors are complete for this step (of layer l, for the block
// tensors): average them over the ranks on the communication stream while the backward goes on
static void model_reduce_grads(Model *m, int group, int l) {
    if (m->dist == NULL || m->dist->world == 1) return;
    const ParamKind *order; int n = param_order(&m->cfg, &order);
    dist_grads_begin(m->dist, m->stream, lt_side_stream);
    for (int j = 0; j < n; j++) {
        if (param_group(order[j]) != group) continue;
        int shape[3]; size_t size = param_shape(&m->cfg, order[j], shape);
        size_t each = group == PG_LAYER ? size / m->cfg.L : size;
        dist_grads_mean(m->dist, GRAD(m, order[j]) + (group == PG_LAYER ? (size_t)l * each : 0), each);
    }
    dist_grads_end(m->dist);
}

// Each norm's backward writes the residual gradient that attproj or fcproj of layer l quantizes
// next. Where that linear is quantized, the norm makes the first pass of the quantization as it
// writes the rows (into s->npart), and the linear takes the gradient with it (residual_grad).
// Returns the pass for norm_backward, NULL for none.
static const NormGradPass *residual_pass(Model *m, int lin, int l, NormGradPass *p) {
    if (l < 0 || !quantized(m, lin)) return NULL;
    int M, K; linear_dims(&m->cfg, lin, &M, &K);
    size_t N = (size_t)m->B * m->T;
    GradPart g = grad_part(m->s.npart, (int)N, M, 1, NORM_ROWS);
    p->col_scale = m->wscales[lin] + (size_t)l * M; p->row_scale = m->acts.xs[lin] + (size_t)l * N;
    p->row_max = g.row_max; p->col_max = g.col_max; p->col_sum = g.col_sum;
    return p;
}
static RowSource residual_grad(const Model *m, int lin) {
    return quantized(m, lin) ? rows_grad_part(m->s.dres, m->s.npart, 1, NORM_ROWS) : rows_plain(m->s.dres);
}

// layer l's weight codes transposed for the dgrads, into wcodes_t: the step's codes (model_weight_scales)
// as they are, one launch for the layer's linears (made from the BF16 weights, one launch a linear
// took ~9 us each: 0.44 ms a step at GPT-2 124M, now 0.09)
static void model_weight_codes_t(Model *m, int l) {
    static_assert(CT_MATS >= NUM_LINEARS, "a layer's linears in one launch");
    CodesT t[NUM_LINEARS];
    int n = 0;
    for (int lin = 0; lin < NUM_LINEARS; lin++) {
        if (!quantized(m, lin)) continue;
        int M, K; linear_dims(&m->cfg, lin, &M, &K);
        t[n++] = (CodesT){ m->wcodes[lin] + (size_t)l * M * K, m->s.wcodes_t + wcodes_t_offset(m, lin), M, K };
    }
    if (n) codes_transpose(t, n, m->stream);
}

// accumulates into the gradients; needs the dlogits left by model_forward(..., grad_scale > 0).
// reduce: the step's last micro-batch, after which the gradients are averaged over the ranks
static void model_backward(Model *m, int reduce) {
    const Config *c = &m->cfg;
    int B = m->B, T = m->T, N = B * T, C = c->C, QKV = config_qkv(c), FF = config_ff(c), F = c->F, hd = config_hd(c);
    int gpt2 = c->arch == ARCH_GPT2;
    Acts *a = &m->acts;
    Scratch *s = &m->s;
    cudaStream_t st = m->stream;
    const float *cs = gpt2 ? NULL : m->rope_cos, *sn = gpt2 ? NULL : m->rope_sin;
    ParamKind head = gpt2 ? P_WTE : P_LMHEAD;
    NormGradPass pass;
    matmul_wgrad(GRAD(m, head), a->logits, a->lnf, N, c->Vp, C, 1.0f, st);
    matmul_dgrad(s->dln, a->logits, PARAM(m, head), NULL, N, c->Vp, C, st);
    CUDA_CHECK(cudaMemsetAsync(s->dres, 0, (size_t)N * C * sizeof(bf16), st));
    const bf16 *res = a->res3 + (size_t)(c->L - 1) * N * C;
    norm_backward(s->dres, GRAD(m, P_LNFW), gpt2 ? GRAD(m, P_LNFB) : NULL, s->partial, s->dln, res, PARAM(m, P_LNFW),
                  a->lnf_mean, a->lnf_rstd, N, C, residual_pass(m, LIN_FCPROJ, c->L - 1, &pass), st);
    if (reduce) model_reduce_grads(m, PG_HEAD, 0);
    for (int l = c->L - 1; l >= 0; l--) {
        model_weight_codes_t(m, l);
        const bf16 *resin = l == 0 ? a->encoded : a->res3 + (size_t)(l - 1) * N * C;
        size_t lc = (size_t)l * N * C;
        const bf16 *atty = a->atty + lc, *res2 = a->res2 + lc, *fch = a->fch + (size_t)l * N * FF;
        const bf16 *qkv = a->qkv + (size_t)l * N * QKV;
        RowSource in[NUM_LINEARS];
        block_inputs(m, l, in);
        const float *stats = a->att_stats + (size_t)l * N * c->H;
        // MLP: fcproj, GELU / SwiGLU, fc, norm 2; the residual gradient passes through. The
        // nonlinearity's derivative: in fc's quantizer, else in fcproj's dgrad epilogue (GELU) or a kernel
        RowSource dres = residual_grad(m, LIN_FCPROJ);
        int qfc = quantized(m, LIN_FC), fused = fused_dgelu(m);
        wgrad_fence(m, LIN_FC);  // fc's gradient of layer l + 1 (dfch_act, dfch) is made again here
        if (gpt2) linear_backward(m, LIN_FCPROJ, l, qfc ? s->dfch_act : s->dfch, &dres, &in[LIN_FCPROJ], qfc && !fused ? NULL : fch, N);
        else {
            linear_backward(m, LIN_FCPROJ, l, s->dfch_act, &dres, &in[LIN_FCPROJ], NULL, N);
            if (!qfc) swiglu_backward(s->dfch, fch, s->dfch_act, N, F, st);
        }
        RowSource dfc = fused ? rows_grad_part(s->dfch_act, s->gpart, fp8_gemm_tiles_n(F), GEMM_PART_ROWS)
                      : qfc ? rows_grad(gpt2 ? ROWS_DGELU : ROWS_DSWIGLU, s->dfch_act, fch) : rows_plain(s->dfch);
        linear_backward(m, LIN_FC, l, s->dln, &dfc, &in[LIN_FC], NULL, N);
        wgrad_fence(m, LIN_FCPROJ);  // dres
        norm_backward(s->dres, GRAD(m, P_LN2W) + (size_t)l * C, gpt2 ? GRAD(m, P_LN2B) + (size_t)l * C : NULL, s->partial,
                      s->dln, res2, PARAM(m, P_LN2W) + (size_t)l * C, gpt2 ? a->ln2_mean + (size_t)l * N : NULL,
                      a->ln2_rstd + (size_t)l * N, N, C, residual_pass(m, LIN_ATTPROJ, l, &pass), st);
        // attention: attproj, the attention core with RoPE, qkv, norm 1
        dres = residual_grad(m, LIN_ATTPROJ);
        linear_backward(m, LIN_ATTPROJ, l, s->datty, &dres, &in[LIN_ATTPROJ], NULL, N);
        wgrad_fence(m, LIN_QKV);  // dqkv, of layer l + 1
        attention_backward(s->dqkv, s->datty, qkv, atty, stats, cs, sn, B, T, c->H, c->KV, hd, m->deterministic, st);
        RowSource dqkv = rows_plain(s->dqkv);
        linear_backward(m, LIN_QKV, l, s->dln, &dqkv, &in[LIN_QKV], NULL, N);
        wgrad_fence(m, LIN_ATTPROJ);  // dres
        norm_backward(s->dres, GRAD(m, P_LN1W) + (size_t)l * C, gpt2 ? GRAD(m, P_LN1B) + (size_t)l * C : NULL, s->partial,
                      s->dln, resin, PARAM(m, P_LN1W) + (size_t)l * C, gpt2 ? a->ln1_mean + (size_t)l * N : NULL,
                      a->ln1_rstd + (size_t)l * N, N, C, residual_pass(m, LIN_FCPROJ, l - 1, &pass), st);
        if (reduce) model_reduce_grads(m, PG_LAYER, l);
    }
    encoder_backward(GRAD(m, P_WTE), gpt2 ? GRAD(m, P_WPE) : NULL, &m->buckets, s->dres, m->host_inputs, B, T, C,
                     c->V, st);
    if (reduce) model_reduce_grads(m, PG_EMBED, 0);
    // the weight gradients' work is done before anything after the backward (the next forward
    // rewrites the inputs it reads; the update reads the gradients)
    CUDA_CHECK(cudaEventRecord(m->wev.done, lt_side_stream));
    CUDA_CHECK(cudaStreamWaitEvent(st, m->wev.done, 0));
}

// DGE (SPEC.md 4) of linear lin's weight gradients, f'(W / s_w), where it applies to the step's sum
// (but where it applied per micro-batch: dge_per_microbatch): the factor is fixed for the whole
// step, so the norm's pass and AdamW each multiply the gradients by it as they read them (the norm
// is of the corrected gradients); the gradient buffer keeps the plain sums. Scales NULL: none.
static Dge model_dge(const Model *m, int lin) {
    Dge d = { NULL, 0, FMT_E2M1, m->recipe.dge_k };
    if (!m->recipe.lin[lin].dge || dge_per_microbatch(m, lin)) return d;
    int M, K; linear_dims(&m->cfg, lin, &M, &K);
    if ((size_t)m->cfg.L * M * K > 0xffffffffu) die("DGE: %s's weights exceed 2^32 entries", linear_names[lin]);
    d.scales = m->wscales[lin]; d.K = (unsigned)K; d.f = m->recipe.lin[lin].f.w;
    return d;
}

// the square of the gradient norm, DGE's factor included, into the running step's StepStats;
// returns its device address
static float *model_grad_sumsq(Model *m) {
    static_assert(MAX_DGE_RANGES >= NUM_LINEARS, "a DGE range per linear");
    DgeRanges dge; memset(&dge, 0, sizeof(dge));
    dge.W = m->params;
    for (int l = 0; l < NUM_LINEARS; l++) {
        Dge d = model_dge(m, l);
        if (!d.scales) continue;
        int M, K; linear_dims(&m->cfg, l, &M, &K);
        dge.r[dge.n].lo = m->off[linear_wkind[l]]; dge.r[dge.n].len = (unsigned)((size_t)m->cfg.L * M * K); dge.r[dge.n].d = d;
        dge.n++;
    }
    float *out = &m->stats[m->slot].sumsq;
    grad_sumsq(out, m->grads, m->nparams, &dge, m->s.partial, m->stream);
    return out;
}

// AdamW (decay on the matrices) on this rank's shard of the parameters, whose updated weights
// then go to every rank; the squared gradient norm before clipping goes to the step's StepStats,
// and AdamW takes the clipping factor from it on the device. Every rank holds the same averaged
// gradients, so DGE and the norm need no communication.
static void model_update(Model *m, float lr, float b1, float b2, float eps, float wd, float clip, int t, uint64_t seed) {
    if (m->dist && m->dist->world > 1) dist_grads_join(m->dist, m->stream);
    const float *sumsq = model_grad_sumsq(m);
    const ParamKind *order; int n = param_order(&m->cfg, &order);
    for (int j = 0; j < n; j++) {  // each tensor's part in [lo, hi)
        int shape[3]; size_t size = param_shape(&m->cfg, order[j], shape), o = m->off[order[j]];
        size_t a = o > m->lo ? o : m->lo, b = o + size < m->hi ? o + size : m->hi;
        if (a >= b) continue;
        Dge dge = { NULL, 0, FMT_E2M1, 0.0f };
        for (int l = 0; l < NUM_LINEARS; l++)
            if (linear_wkind[l] == order[j]) dge = model_dge(m, l);
        adamw_update(m->params + a, m->master ? m->master + (a - m->lo) : NULL, m->grads + a, m->m + (a - m->lo), m->v + (a - m->lo),
                     b - a, lr, b1, b2, t, eps, param_decays(order[j]) ? wd : 0.0f, sumsq, clip, rng_hash(seed, ((uint64_t)t << 8) + j),
                     a - o, &dge, m->stream);
    }
    if (m->parts > 1) dist_all_gather(m->dist, m->params, m->shard, 2, m->stream);
    m->wq_stale = 1;
}

static void model_free(Model *m) {
    size_t padded = (size_t)m->parts * m->shard, own = m->hi - m->lo, hd = config_hd(&m->cfg);
    cuda_free(m->params, padded * sizeof(bf16));
    cuda_free(m->grads, padded * sizeof(float));
    if (m->master) cuda_free(m->master, own * sizeof(float));
    cuda_free(m->m, own * sizeof(float)); cuda_free(m->v, own * sizeof(float));
    cuda_free(m->stats, STATS_SLOTS * sizeof(StepStats));
    CUDA_CHECK(cudaFreeHost(m->host_stats));
    cuda_free(m->rope_cos, (size_t)m->cfg.T * hd * sizeof(float));
    if (m->wscales_mem) cuda_free(m->wscales_mem, m->nwscales * sizeof(float));
    if (m->wcodes_mem) cuda_free(m->wcodes_mem, m->nwcodes);
    cuda_free(m->qsums, (size_t)m->cfg.L * NUM_LINEARS * QS_N * sizeof(double));
    cuda_free(m->ones, m->nones * sizeof(float));
    model_free_acts(m);
    CUDA_CHECK(cudaStreamDestroy(m->stream));
    cudaEvent_t *ev = (cudaEvent_t *)&m->wev;
    for (size_t i = 0; i < sizeof(m->wev) / sizeof(*ev); i++) CUDA_CHECK(cudaEventDestroy(ev[i]));
}

// the libraries' handles, on the current device
static void gpu_init(void) { matmul_init(); }

// --quant-stats: what the forward + backward just run added up, a log line per quantized linear
// per layer (Table 1's five settings come from the CPU trainer, on a checkpoint)
static void log_quant_stats(Model *m, Logger *lg, int step, int N) {
    size_t n = (size_t)m->cfg.L * NUM_LINEARS * QS_N;
    double *sums = (double *)malloc_check(n * sizeof(double));
    model_wait(m);
    cuda_download(sums, m->qsums, n * sizeof(double));
    for (int l = 0; l < m->cfg.L; l++) {
        for (int lin = 0; lin < NUM_LINEARS; lin++) {
            if (!quantized(m, lin)) continue;
            int M, K; linear_dims(&m->cfg, lin, &M, &K);
            QStats q = qstats_from_sums(sums + ((size_t)l * NUM_LINEARS + lin) * QS_N, N, M, K);
            logger_quant(lg, step, l, linear_names[lin], format_name(m->recipe.lin[lin].f.x), &q);
        }
    }
    free(sums);
}

#ifndef TESTING
// the mean loss of `steps` val batches per rank (each rank its own), over all ranks
static float evaluate(Model *m, DataLoader *val, int steps) {
    dataloader_reset(val);
    model_stats_begin(m, 0);
    for (int i = 0; i < steps; i++) {
        dataloader_next(val);
        model_forward(m, val->inputs, val->targets, val->B, val->T, 0.0f, 1.0 / steps);
    }
    double loss = model_stats_wait(m).loss;
    return (float)(m->dist ? dist_mean(m->dist, loss) : loss);
}

// The training loop's log: the step queued last and not yet logged (pending). One rank: the host
// queues step s + 1 before it waits for step s, so the GPU never waits for the host between
// steps, and a step's time is the GPU's, from its start event to its end event (the start runs
// when the GPU has finished what was queued before it: idle time inside the step counts, and the
// host's lead does not move time between steps). Several ranks: each step is logged as soon as it
// is queued (the replica check and the loss's mean wait for it), timed by the host's clock from
// its queueing to the end of those.
typedef struct {
    Model *m; Dist *dist; Run *run;
    int main_rank, max_steps;
    long long step_tokens;
    double flops_tok;
    int pending, step, slot;        // the pending step and its StepStats slot
    float lr;
    double t0;                      // host seconds: when the pending step began to be queued
    unsigned replica_hash;
    cudaEvent_t start[STATS_SLOTS], end[STATS_SLOTS];  // each slot's step's, on the model's stream
} StepLog;

// waits for the pending step and logs it
static void step_log_flush(StepLog *q) {
    if (!q->pending) return;
    q->pending = 0;
    Model *m = q->m;
    const StepStats *r = m->host_stats + q->slot;
    double loss;
    float ms;
    if (q->dist->world > 1) {
        model_wait(m);  // through the watchdog
        q->replica_hash = dist_check_replicas(q->dist, m->params, (size_t)m->parts * m->shard, m->stream, q->step + 1);
        loss = dist_mean(q->dist, r->loss);
        ms = (float)((now_seconds() - q->t0) * 1e3);
    } else {
        CUDA_CHECK(cudaEventSynchronize(q->end[q->slot]));
        CUDA_CHECK(cudaEventElapsedTime(&ms, q->start[q->slot], q->end[q->slot]));
        loss = r->loss;
    }
    float norm = sqrtf(r->sumsq);
    double tok_s = (double)q->step_tokens / (ms / 1e3);
    double mfu = tok_s / q->dist->world * q->flops_tok / 989e12;  // per GPU, against the H100 SXM dense BF16 peak
    double eta_s = (q->max_steps - q->step - 1) * ms / 1e3;
    if (q->main_rank)
        printf("step %5d/%d | loss %.6f | norm %.4f | lr %.2e | %.1f ms | %.0f tok/s | MFU %.1f%% | ETA %.0f s\n", q->step + 1,
               q->max_steps, loss, norm, q->lr, ms, tok_s, 100 * mfu, eta_s);
    logger_train(&q->run->lg, q->step + 1, (long long)(q->step + 1) * q->step_tokens, (float)loss, norm, q->lr, ms, tok_s);
    if (!isfinite(loss)) die("loss is %f at step %d: diverged", loss, q->step + 1);
}

// samples after <|endoftext|>: the forward of the growing prefix, the next token from row t-1
static void sample(Model *m, Run *run, int gen_tokens) {
    int B = run->train.B, T = run->train.T;
    int *gen = (int *)calloc_check((size_t)B * T, sizeof(int));
    int eot = run->have_tok ? (int)run->tok.eot : m->cfg.V - 1, V = m->cfg.V;
    for (int i = 0; i < B * T; i++) gen[i] = eot;
    bf16 *row = (bf16 *)malloc_check((size_t)V * sizeof(bf16));
    int n = gen_tokens < T ? gen_tokens : T - 1;
    printf("generating:\n---\n");
    for (int t = 1; t <= n; t++) {
        model_forward(m, gen, NULL, B, T, 0.0f, 0.0);
        cuda_download(row, m->acts.logits + (size_t)(t - 1) * m->cfg.Vp, (size_t)V * sizeof(bf16));
        float maxv = -INFINITY;
        for (int i = 0; i < V; i++) maxv = fmaxf(maxv, __bfloat162float(row[i]));
        double sum = 0.0;
        for (int i = 0; i < V; i++) sum += exp(__bfloat162float(row[i]) - maxv);
        double coin = rng_next_uniform(&run->rng) * sum, cdf = 0.0;
        int next = V - 1;
        for (int i = 0; i < V; i++) { cdf += exp(__bfloat162float(row[i]) - maxv); if (coin <= cdf) { next = i; break; } }
        gen[t] = next;
        if (run->have_tok) tokenizer_print(&run->tok, (uint32_t)next); else printf("%d ", next);
        fflush(stdout);
    }
    printf("\n---\n");
    free(row); free(gen);
}

// the checkpoint at `step`: each rank's optimizer shard (one file when unsharded), then, once all
// of them are on disk, the model from rank 0, so that a model file means a complete checkpoint
static void save_checkpoint(Model *m, Run *run, const Args *a, int step, float *host_params) {
    Dist *d = m->dist;
    model_wait(m);
    if (m->parts > 1 || d->rank == 0) {
        TrainState now = { step, run->train.shard, run->train.pos, run->rng.counter };
        size_t own = m->hi - m->lo;
        float *mv = (float *)malloc_check(2 * own * sizeof(float));
        cuda_download(mv, m->m, own * sizeof(float));
        cuda_download(mv + own, m->v, own * sizeof(float));
        checkpoint_write_state(a->out_dir, step, m->part, m->parts, &now, mv, mv + own, m->nparams, m->lo, m->hi);
        free(mv);
    }
    model_get_params(m, d->rank == 0 ? host_params : NULL);
    dist_mean(d, 0.0);  // a barrier: every shard is written
    if (d->rank == 0) {
        char path[1100];
        run_model_file(a, step, path, sizeof(path));
        checkpoint_write_model(path, &m->cfg, host_params, step);
        printf("wrote %s\n", path);
    }
}

int main(int argc, char **argv) {
    Args a = args_defaults("gpt2:d12", "bf16");
    a.B = 8; a.T = 1024; a.lr = 6e-4f;
    int master_fp32 = 0, zero = 1, deterministic = 1, own_gemm = 1, wgrad_stream = 1, fast_accum = 1;
    float timeout_s = 300.0f;
    const char *dist_addr = NULL;
    Flag flags[MAX_FLAGS];
    int nflags = args_flags(&a, flags);
    flags[nflags++] = (Flag){ "--master-fp32", FLAG_INT, &master_fp32, "1: keep FP32 master weights (else BF16 + stochastic rounding)" };
    flags[nflags++] = (Flag){ "--zero", FLAG_INT, &zero, "1: shard the optimizer state over the ranks (ZeRO-1); 0: replicate it" };
    flags[nflags++] = (Flag){ "--deterministic", FLAG_INT, &deterministic, "1: the same bits run after run (attention's backward in a fixed order); 0: cuDNN's fastest" };
    flags[nflags++] = (Flag){ "--own-gemm", FLAG_INT, &own_gemm, "1: our FP8 GEMM with quantizers in its epilogue where the GPU runs it (Hopper); 0: cuBLASLt's" };
    flags[nflags++] = (Flag){ "--wgrad-stream", FLAG_INT, &wgrad_stream, "1: the weight gradients on a second stream, beside the backward; 0: in line" };
    flags[nflags++] = (Flag){ "--fast-accum", FLAG_INT, &fast_accum, "1: forward GEMMs of 4-bit codes sum in the tensor cores (faster; on the losses: dev/NOTES.md, session 29); 0: promoted to FP32 every 128 k, as all others are" };
    flags[nflags++] = (Flag){ "--dist-init", FLAG_STR, &dist_addr, "HOST:PORT of rank 0, for a multi-process start without MPI" };
    flags[nflags++] = (Flag){ "--nccl-timeout", FLAG_FLOAT, &timeout_s, "seconds a rank waits for the others before ending the job" };
    setvbuf(stdout, NULL, _IOLBF, 0);
    parse_flags(argc, argv, flags, nflags, "./train_gpt2_fp4", "GPU trainer for GPT-2 and LLaMA (SPEC.md)");
    check_args(&a);
    if ((master_fp32 | zero | deterministic | own_gemm | wgrad_stream | fast_accum) & ~1)
        die("--master-fp32, --zero, --deterministic, --own-gemm, --wgrad-stream and --fast-accum take 0 or 1");
    if (!(timeout_s >= 1.0f)) die("--nccl-timeout must be at least 1 second");
    RecipeOptions ro = recipe_options(&a);
    Recipe recipe = gpu_recipe(&ro);
    if (a.quant_stats && strcmp(recipe_table[ro.recipe].name, "bf16") == 0) die("--quant-stats measures quantized linears: bf16 has none");
    Dist dist;
    dist_init(&dist, dist_addr, timeout_s);
    int main_rank = dist.rank == 0;
    if (a.out_dir && mkdir(a.out_dir, 0755) != 0 && errno != EEXIST) die("cannot create %s: %s", a.out_dir, strerror(errno));
    gpu_init();

    Config cfg;
    TrainState st = { 0, 0, 0, 0 };
    int resume_step = run_resume_step(&a);
    char path[1100];
    const char *model_path = run_model_path(&a, resume_step, path, sizeof(path));
    float *host_params;
    int ckpt_step = 0;
    if (model_path) host_params = checkpoint_read_model(model_path, &cfg, &ckpt_step);
    else {
        cfg = config_parse(a.model);
        host_params = (float *)malloc_check(param_count(&cfg) * sizeof(float));
        params_init(&cfg, host_params, (uint64_t)a.seed);
    }
    Model m;
    model_create(&m, &cfg, &recipe, master_fp32, &dist, zero);
    m.deterministic = deterministic;
    m.own_gemm &= own_gemm;
    m.wgrad_stream = wgrad_stream;
    m.fast_accum = fast_accum;
    model_set_params(&m, host_params);
    if (resume_step >= 0) {  // this rank's shard of the state, whatever the saving run's number of ranks
        size_t own = m.hi - m.lo;
        float *mv = (float *)malloc_check(2 * own * sizeof(float));
        checkpoint_read_state(a.out_dir, resume_step, &st, mv, mv + own, m.nparams, m.lo, m.hi);
        if (st.step != ckpt_step) die("%s: state step %d does not match the model's %d", a.out_dir, st.step, ckpt_step);
        cuda_upload(m.m, mv, own * sizeof(float));
        cuda_upload(m.v, mv + own, own * sizeof(float));
        free(mv);
    }
    if (a.T > cfg.T) die("sequence length -t %d exceeds the model's maximum T = %d", a.T, cfg.T);
    long long rank_tokens = (long long)a.B * a.T, step_tokens = rank_tokens * dist.world;
    if (a.total_batch > 0 && a.total_batch % step_tokens != 0)
        die("total batch -d %d is not a multiple of -b * -t * ranks = %lld", a.total_batch, step_tokens);
    int accum = a.total_batch > 0 ? (int)(a.total_batch / step_tokens) : 1;
    step_tokens *= accum;
    char desc[256];
    config_describe(&cfg, desc, sizeof(desc));
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, dist.device));
    if (main_rank) {
        printf("device %s x %d rank(s)%s\nmodel %s, %zu parameters\n", prop.name, dist.world,
               dist.world > 1 ? (m.parts > 1 ? ", optimizer state sharded (ZeRO-1)" : ", optimizer state replicated") : "", desc, m.nparams);
        recipe_print(recipe_table[ro.recipe].name, &recipe);
        int fp4_gemms = 0;
        for (int l = 0; l < NUM_LINEARS; l++) fp4_gemms |= fast_accum_fits(&recipe.lin[l].f);
        if (fp4_gemms) printf("forward GEMMs of 4-bit codes %s\n", fast_accum ? "summed in the tensor cores (--fast-accum 1)" : "promoted to FP32 every 128 k (--fast-accum 0)");
        printf("%s master weights\nbatch %d x %d per rank, %d micro-step(s) per step, %lld tokens per step, %d steps\n",
               master_fp32 ? "FP32" : "BF16 (stochastic rounding)", a.B, a.T, accum, step_tokens, a.max_steps);
    }

    Run run;
    run_open(&run, &a, &cfg, &st, resume_step >= 0, dist.rank, dist.world, accum);
    // FLOPs per token for MFU: 6 per weight of the matmuls, plus attention's 6 L T C (causal half of 12)
    double flops_tok = 6.0 * (double)(m.nparams - (cfg.arch == ARCH_GPT2 ? (size_t)cfg.T * cfg.C : 0)) + 6.0 * cfg.L * a.T * cfg.C;
    StepLog q = { &m, &dist, &run, main_rank, a.max_steps, step_tokens, flops_tok, 0, 0, 0, 0.0f, 0.0, 0, {}, {} };
    for (int i = 0; i < STATS_SLOTS; i++) { CUDA_CHECK(cudaEventCreate(&q.start[i])); CUDA_CHECK(cudaEventCreate(&q.end[i])); }

    for (int step = st.step; step <= a.max_steps; step++) {
        int last = step == a.max_steps;
        if (last || run_eval_due(&a, step) || run_sample_due(&a, step) || run_ckpt_due(&a, step, st.step)) step_log_flush(&q);
        if (run_eval_due(&a, step)) {
            float val = evaluate(&m, &run.val, a.val_steps);
            if (main_rank) run_report_eval(&run, step, (long long)step * step_tokens, val);
        }
        if (run_sample_due(&a, step) && main_rank) sample(&m, &run, a.gen_tokens);
        if (run_ckpt_due(&a, step, st.step)) save_checkpoint(&m, &run, &a, step, host_params);
        if (last) break;
        double t0 = now_seconds();
        CUDA_CHECK(cudaEventRecord(q.start[step % STATS_SLOTS], m.stream));
        model_stats_begin(&m, step % STATS_SLOTS);
        model_zero_grad(&m);
        for (int micro = 0; micro < accum; micro++) {
            m.qstats = micro == 0 && a.quant_stats && step % a.quant_stats == 0;  // the step's first micro-batch
            if (m.qstats) CUDA_CHECK(cudaMemsetAsync(m.qsums, 0, (size_t)cfg.L * NUM_LINEARS * QS_N * sizeof(double), m.stream));
            dataloader_next(&run.train);
            model_forward(&m, run.train.inputs, run.train.targets, a.B, a.T, 1.0f / accum, 1.0 / accum);
            model_backward(&m, micro == accum - 1);
            if (m.qstats && main_rank) log_quant_stats(&m, &run.lg, step, a.B * a.T);
            m.qstats = 0;
        }
        float lr = lr_schedule(a.lr, step, a.warmup, a.max_steps, a.final_frac);
        model_update(&m, lr, a.b1, a.b2, 1e-8f, a.wd, a.clip, step + 1, (uint64_t)a.seed);
        model_stats_end(&m);
        CUDA_CHECK(cudaEventRecord(q.end[m.slot], m.stream));
        step_log_flush(&q);  // the step before this one, now that this one is queued
        q.pending = 1; q.step = step; q.slot = m.slot; q.lr = lr; q.t0 = t0;
        if (dist.world > 1) step_log_flush(&q);  // the replica check and the loss's mean wait for the step
    }
    for (int i = 0; i < STATS_SLOTS; i++) { CUDA_CHECK(cudaEventDestroy(q.start[i])); CUDA_CHECK(cudaEventDestroy(q.end[i])); }
    if (main_rank && dist.world > 1 && a.max_steps > st.step)
        printf("replicas: weights bit-identical on all %d ranks after every step (hash %08x)\n", dist.world, q.replica_hash);
    if (main_rank) printf("peak GPU memory %.0f MiB (the trainer's allocations)\n", (cuda_peak_bytes + cudnn_attention_bytes()) / 1048576.0);
    run_close(&run);
    free(host_params);
    model_free(&m);
    dist_free(&dist);
    return 0;
}
#endif
