/*
CPU reference trainer for GPT-2 and LLaMA, FP32, with the low-precision recipes of SPEC.md
simulated exactly: every block linear quantizes its operands with the rules of llmc/quant.h, so
the GPU trainer can be diffed against this file, and this file against the PyTorch reference.
Forward and backward are written by hand, one function per layer, chained in model_forward and
model_backward. Plain C11 + OpenMP; every parallel loop writes disjoint outputs, so results do
not depend on the thread count.
*/
#define _DEFAULT_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <time.h>
#include <sys/stat.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "llmc/utils.h"
#include "llmc/rand.h"
#include "llmc/model.h"
#include "llmc/quant.h"
#include "llmc/attention_fp8.h"
#include "llmc/recipe.h"
#include "llmc/args.h"
#include "llmc/dataloader.h"
#include "llmc/tokenizer.h"
#include "llmc/checkpoint.h"
#include "llmc/schedulers.h"
#include "llmc/logger.h"
#include "llmc/run.h"
#include "llmc/quant_stats.h"

// ---------------------------------------------------------------------------------------------
// the model

typedef union {  // one pointer per tensor kind into a contiguous buffer; NULL if absent
    struct {
        float *wte;       // (Vp, C)
        float *wpe;       // (T, C)              GPT-2
        float *ln1w;      // (L, C)
        float *ln1b;      // (L, C)              GPT-2
        float *qkvw;      // (L, QKV, C)
        float *qkvb;      // (L, QKV)            GPT-2
        float *attprojw;  // (L, C, C)
        float *attprojb;  // (L, C)              GPT-2
        float *ln2w;      // (L, C)
        float *ln2b;      // (L, C)              GPT-2
        float *fcw;       // (L, FF, C)          FF = F (GPT-2) or 2F (LLaMA: gate | up)
        float *fcb;       // (L, FF)             GPT-2
        float *fcprojw;   // (L, C, F)
        float *fcprojb;   // (L, C)              GPT-2
        float *lnfw;      // (C)
        float *lnfb;      // (C)                 GPT-2
        float *lmhead;    // (Vp, C)             LLaMA (GPT-2 ties it to wte)
    };
    float *t[NUM_PARAM_KINDS];
} Params;

static void params_point(Params *p, const Config *c, float *mem) {
    memset(p, 0, sizeof(*p));
    const ParamKind *order; int n = param_order(c, &order);
    int shape[3];
    for (int i = 0; i < n; i++) { p->t[order[i]] = mem; mem += param_shape(c, order[i], shape); }
}

typedef struct { float *codes, *scales, *deq; } QWeight;  // (L, M, K), (L, M), (L, M, K)

typedef struct {
    float *encoded;            // (N, C) embedding: the residual stream into layer 0
    float *ln1;                // (L, N, C) norm output into qkv
    float *ln1_mean, *ln1_rstd;// (L, N)
    float *qkv;                // (L, N, QKV) after RoPE
    float *att;                // (L, B, H, T, T) attention probabilities
    float *atty;               // (L, N, C) attention output into attproj
    float *res2;               // (L, N, C) residual stream after attention
    float *ln2;                // (L, N, C) norm output into fc
    float *ln2_mean, *ln2_rstd;// (L, N)
    float *fch;                // (L, N, FF) fc output
    float *fch_act;            // (L, N, F) GELU / SwiGLU output into fcproj
    float *res3;               // (L, N, C) residual stream after the MLP
    float *lnf;                // (N, C)
    float *lnf_mean, *lnf_rstd;// (N)
    float *logits;             // (N, Vp)
    float *probs;              // (N, Vp) softmax over the first V columns; dlogits in backward
    float *losses;             // (N)
    float *xcodes[NUM_LINEARS];  // (L, N, K) saved input codes of each block linear
    float *xscales[NUM_LINEARS]; // (L, N) their per-token scales
    float *xresid[NUM_LINEARS];  // (L, N, K) OCC residual X - clamp(X); NULL without OCC
} Acts;

typedef struct {                // backward buffers, reused layer after layer
    float *dres;                // (N, C) gradient of the residual stream
    float *dln;                 // (N, C)
    float *dqkv;                // (N, QKV)
    float *datty;               // (N, C)
    float *dfch;                // (N, FF)
    float *dfch_act;            // (N, F)
    float *gfold;               // (N, maxM) output gradient with a scale folded in, dequantized
    float *gcodes;              // (N, maxM) its codes
    float *gscales;             // (max(N, maxM))
    float *xdeq;                // (N, maxK) forward: clamped, then dequantized input
    float *dwq;                 // (maxM, maxK) gradient of the quantized weight
} Scratch;

typedef struct {
    Config cfg;
    Recipe recipe;
    size_t nparams;
    float *params_mem, *grads_mem, *m_mem, *v_mem;
    Params params, grads;
    QWeight qw[NUM_LINEARS];
    float *rope_cos, *rope_sin;  // (T, hd/2) LLaMA
    int B, T;                    // activation sizes
    float *acts_mem, *scratch_mem;
    Acts acts;
    Scratch s;
    int *inputs, *targets;       // (B, T) of the last forward
    float loss;                  // mean loss of the last forward (-1 without targets)
    long occ_clamped;            // OCC: entries clamped in the last forward
    QStats *qstats;              // (L, NUM_LINEARS) --quant-stats: filled by the next forward + backward, else NULL
} Model;

// linear l's weight and bias tensors
static float *linear_weight(Params *p, int l) {
    return l == LIN_QKV ? p->qkvw : l == LIN_ATTPROJ ? p->attprojw : l == LIN_FC ? p->fcw : p->fcprojw;
}

static float *linear_bias(Params *p, int l) {
    return l == LIN_QKV ? p->qkvb : l == LIN_ATTPROJ ? p->attprojb : l == LIN_FC ? p->fcb : p->fcprojb;
}

static void model_alloc_params(Model *m, const Config *c) {
    memset(m, 0, sizeof(*m));
    m->cfg = *c;
    m->nparams = param_count(c);
    m->params_mem = (float *)malloc_check(m->nparams * sizeof(float));
    m->grads_mem = (float *)calloc_check(m->nparams, sizeof(float));
    m->m_mem = (float *)calloc_check(m->nparams, sizeof(float));
    m->v_mem = (float *)calloc_check(m->nparams, sizeof(float));
    params_point(&m->params, c, m->params_mem);
    params_point(&m->grads, c, m->grads_mem);
    for (int l = 0; l < NUM_LINEARS; l++) {
        int M, K; linear_dims(c, l, &M, &K);
        size_t n = (size_t)c->L * M * K;
        m->qw[l].codes = (float *)malloc_check(n * sizeof(float));
        m->qw[l].deq = (float *)malloc_check(n * sizeof(float));
        m->qw[l].scales = (float *)malloc_check((size_t)c->L * M * sizeof(float));
    }
    int hd = config_hd(c);
    m->rope_cos = (float *)malloc_check((size_t)c->T * hd / 2 * sizeof(float));
    m->rope_sin = (float *)malloc_check((size_t)c->T * hd / 2 * sizeof(float));
    for (int t = 0; t < c->T; t++) {
        for (int i = 0; i < hd / 2; i++) {
            double angle = t * pow(c->rope_theta, -2.0 * i / hd);
            m->rope_cos[t * hd / 2 + i] = (float)cos(angle);
            m->rope_sin[t * hd / 2 + i] = (float)sin(angle);
        }
    }
    m->B = m->T = 0; m->acts_mem = m->scratch_mem = NULL;
    m->loss = -1.0f;
}

static void model_init(Model *m, const Config *c, uint64_t seed) {
    model_alloc_params(m, c);
    params_init(c, m->params_mem, seed);
}

static void model_set_recipe(Model *m, const RecipeOptions *o) { m->recipe = recipe_resolve(o); }

// activation buffers for batches of B x T, one allocation with the shapes of Acts
static void model_alloc_acts(Model *m, int B, int T) {
    if (m->B == B && m->T == T) return;
    free(m->acts_mem); free(m->scratch_mem);
    const Config *c = &m->cfg;
    size_t N = (size_t)B * T, L = c->L, C = c->C, QKV = config_qkv(c), FF = config_ff(c), F = c->F, H = c->H;
    size_t maxM = QKV > FF ? QKV : FF, maxK = C > F ? C : F;
    if (maxM < C) maxM = C;
    struct { float **ptr; size_t n; } a[64];
    int na = 0;
#define ACT(p, size) (a[na].ptr = &(p), a[na].n = (size), na++)
    Acts *x = &m->acts;
    ACT(x->encoded, N * C);
    ACT(x->ln1, L * N * C); ACT(x->ln1_mean, L * N); ACT(x->ln1_rstd, L * N);
    ACT(x->qkv, L * N * QKV); ACT(x->att, L * B * H * T * T); ACT(x->atty, L * N * C);
    ACT(x->res2, L * N * C);
    ACT(x->ln2, L * N * C); ACT(x->ln2_mean, L * N); ACT(x->ln2_rstd, L * N);
    ACT(x->fch, L * N * FF); ACT(x->fch_act, L * N * F); ACT(x->res3, L * N * C);
    ACT(x->lnf, N * C); ACT(x->lnf_mean, N); ACT(x->lnf_rstd, N);
    ACT(x->logits, N * c->Vp); ACT(x->probs, N * c->Vp); ACT(x->losses, N);
    for (int l = 0; l < NUM_LINEARS; l++) {
        int Ml, Kl; linear_dims(c, l, &Ml, &Kl);
        ACT(x->xcodes[l], L * N * Kl); ACT(x->xscales[l], L * N);
        x->xresid[l] = NULL;
        if (m->recipe.lin[l].occ) ACT(x->xresid[l], L * N * Kl);
    }
    size_t total = 0;
    for (int i = 0; i < na; i++) total += a[i].n;
    m->acts_mem = (float *)malloc_check(total * sizeof(float));
    float *p = m->acts_mem;
    for (int i = 0; i < na; i++) { *a[i].ptr = p; p += a[i].n; }
    na = 0;
    Scratch *s = &m->s;
    ACT(s->dres, N * C); ACT(s->dln, N * C); ACT(s->dqkv, N * QKV); ACT(s->datty, N * C);
    ACT(s->dfch, N * FF); ACT(s->dfch_act, N * F);
    ACT(s->gfold, N * maxM); ACT(s->gcodes, N * maxM); ACT(s->gscales, N > maxM ? N : maxM);
    ACT(s->xdeq, N * maxK); ACT(s->dwq, maxM * maxK);
#undef ACT
    total = 0;
    for (int i = 0; i < na; i++) total += a[i].n;
    m->scratch_mem = (float *)malloc_check(total * sizeof(float));
    p = m->scratch_mem;
    for (int i = 0; i < na; i++) { *a[i].ptr = p; p += a[i].n; }
    m->B = B; m->T = T;
}

// ---------------------------------------------------------------------------------------------
// matmuls: the three shapes a linear layer needs

// out (N, M) = a (N, K) b (M, K)^T + bias (M), bias may be NULL
static void matmul_nt(float *out, const float *a, const float *b, const float *bias, int N, int K, int M) {
    #pragma omp parallel for collapse(2)
    for (int n0 = 0; n0 < N; n0 += 4) {
        for (int m = 0; m < M; m++) {
            const float *bm = b + (size_t)m * K;
            int rows = N - n0 < 4 ? N - n0 : 4;
            for (int r = 0; r < rows; r++) {
                const float *an = a + (size_t)(n0 + r) * K;
                float sum = 0.0f;
                #pragma omp simd reduction(+:sum)
                for (int k = 0; k < K; k++) sum += an[k] * bm[k];
                out[(size_t)(n0 + r) * M + m] = sum + (bias ? bias[m] : 0.0f);
            }
        }
    }
}

// out (N, K) += a (N, M) b (M, K). Accumulates in double: M is the vocabulary (50k terms) in
// the LM head's backward, where a float sum would carry ~1e-5 relative error.
static void matmul_nn_acc(float *out, const float *a, const float *b, int N, int M, int K) {
    #pragma omp parallel
    {
        double *acc = (double *)malloc_check((size_t)K * sizeof(double));
        #pragma omp for
        for (int n = 0; n < N; n++) {
            for (int k = 0; k < K; k++) acc[k] = 0.0;
            for (int m = 0; m < M; m++) {
                float s = a[(size_t)n * M + m];
                const float *bm = b + (size_t)m * K;
                #pragma omp simd
                for (int k = 0; k < K; k++) acc[k] += s * bm[k];
            }
            float *on = out + (size_t)n * K;
            for (int k = 0; k < K; k++) on[k] += (float)acc[k];
        }
        free(acc);
    }
}

// out (M, K) += a (N, M)^T b (N, K)
static void matmul_tn_acc(float *out, const float *a, const float *b, int N, int M, int K) {
    #pragma omp parallel for
    for (int m = 0; m < M; m++) {
        float *om = out + (size_t)m * K;
        for (int n = 0; n < N; n++) {
            float s = a[(size_t)n * M + m];
            const float *bn = b + (size_t)n * K;
            #pragma omp simd
            for (int k = 0; k < K; k++) om[k] += s * bn[k];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// block linear under the recipe (SPEC.md 4)

// codes (rows, cols) times their scales along axis (0: one per row, 1: one per column)
static void dequantize(float *out, const float *codes, const float *scales, int rows, int cols, int axis) {
    #pragma omp parallel for
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < cols; c++) {
            size_t i = (size_t)r * cols + c;
            out[i] = codes[i] * scales[axis == 0 ? r : c];
        }
    }
}

// quantized weights of every block linear, once per optimizer step
static void model_quantize_weights(Model *m) {
    const Config *c = &m->cfg;
    for (int l = 0; l < NUM_LINEARS; l++) {
        int M, K; linear_dims(c, l, &M, &K);
        const float *W = linear_weight(&m->params, l);
        QWeight *q = &m->qw[l];
        for (int layer = 0; layer < c->L; layer++) {
            size_t o = (size_t)layer * M * K;
            quantize_matrix(q->codes + o, q->scales + (size_t)layer * M, W + o, M, K, m->recipe.lin[l].f.w, 0, m->recipe.tensorwise);
            dequantize(q->deq + o, q->codes + o, q->scales + (size_t)layer * M, M, K, 0);
        }
    }
}

// out (N, M) = Q(X) Q(W)^T + R W^T + b (R W^T: OCC's exact compensation, --occ-comp 1; with 2, R
// rides in X's codes); saves X's codes, scales and OCC residual for backward
static void linear_forward(Model *m, int lin, int layer, float *out, const float *inp, int N) {
    const LinearRecipe *r = &m->recipe.lin[lin];
    int M, K; linear_dims(&m->cfg, lin, &M, &K);
    size_t wo = (size_t)layer * M * K;
    float *codes = m->acts.xcodes[lin] + (size_t)layer * N * K;
    float *scales = m->acts.xscales[lin] + (size_t)layer * N;
    float *xdeq = m->s.xdeq;
    const float *x = inp;
    float *resid = NULL;
    long clamped = 0;
    if (r->occ) {
        resid = m->acts.xresid[lin] + (size_t)layer * N * K;
        clamped = occ_clamp_rows(xdeq, resid, inp, N, K, m->recipe.occ_alpha);
        m->occ_clamped += clamped;
        x = xdeq;
    }
    quantize_matrix(codes, scales, x, N, K, r->f.x, 0, m->recipe.tensorwise);
    if (r->occ && m->recipe.occ_comp == OCC_COMP_OPERAND) occ_fold_codes(codes, scales, inp, xdeq, N, K);
    const float *comp = r->occ && m->recipe.occ_comp == OCC_COMP_BF16 ? resid : NULL;  // the residual the GEMM's output gets back
    if (m->qstats) {
        QStats *q = &m->qstats[layer * NUM_LINEARS + lin];
        q->x = quant_error(inp, codes, scales, comp, N, K, 0);
        q->w = quant_error(linear_weight(&m->params, lin) + wo, m->qw[lin].codes + wo, m->qw[lin].scales + (size_t)layer * M, NULL, M, K, 0);
        q->clamped = (double)clamped / ((double)N * K);
        quant_table_x(q->table, inp, N, K, r->f.x);
        q->has_table = 1;
        q->has_occ = r->occ;
        if (r->occ) q->occ = occ_shape(resid, N, K);
    }
    dequantize(xdeq, codes, scales, N, K, 0);
    const float *bias = linear_bias(&m->params, lin);
    matmul_nt(out, xdeq, m->qw[lin].deq + wo, bias ? bias + (size_t)layer * M : NULL, N, K, M);
    if (comp) {  // compensation: the sparse outliers times the unquantized weight
        const float *W = linear_weight(&m->params, lin) + wo;
        #pragma omp parallel for
        for (int n = 0; n < N; n++) {
            for (int k = 0; k < K; k++) {
                float rv = comp[(size_t)n * K + k];
                if (rv == 0.0f) continue;
                for (int j = 0; j < M; j++) out[(size_t)n * M + j] += rv * W[(size_t)j * K + k];
            }
        }
    }
}

// dinp (N, K) = dX; dW, db accumulate. dout (N, M) is the raw output gradient.
static void linear_backward(Model *m, int lin, int layer, float *dinp, const float *dout, int N) {
    const LinearRecipe *r = &m->recipe.lin[lin];
    int M, K; linear_dims(&m->cfg, lin, &M, &K);
    size_t wo = (size_t)layer * M * K;
    const float *sw = m->qw[lin].scales + (size_t)layer * M;
    const float *cw = m->qw[lin].codes + wo;
    const float *cx = m->acts.xcodes[lin] + (size_t)layer * N * K;
    const float *sx = m->acts.xscales[lin] + (size_t)layer * N;
    float *g = m->s.gfold, *gc = m->s.gcodes, *gs = m->s.gscales;
    // dgrad: fold sw into G's columns, quantize per token, contract with the weight codes
    #pragma omp parallel for
    for (int n = 0; n < N; n++) for (int j = 0; j < M; j++) g[(size_t)n * M + j] = dout[(size_t)n * M + j] * sw[j];
    quantize_matrix(gc, gs, g, N, M, r->f.g, 0, m->recipe.tensorwise);
    QStats *q = m->qstats ? &m->qstats[layer * NUM_LINEARS + lin] : NULL;
    if (q) q->g = quant_error(g, gc, gs, NULL, N, M, 0);
    dequantize(g, gc, gs, N, M, 0);
    memset(dinp, 0, (size_t)N * K * sizeof(float));
    matmul_nn_acc(dinp, g, cw, N, M, K);
    // wgrad: fold sx into G's rows, quantize per output channel, contract with the input codes
    #pragma omp parallel for
    for (int n = 0; n < N; n++) for (int j = 0; j < M; j++) g[(size_t)n * M + j] = dout[(size_t)n * M + j] * sx[n];
    quantize_matrix(gc, gs, g, N, M, r->f.g, 1, m->recipe.tensorwise);
    dequantize(g, gc, gs, N, M, 1);
    float *dwq = m->s.dwq;
    memset(dwq, 0, (size_t)M * K * sizeof(float));
    matmul_tn_acc(dwq, g, cx, N, M, K);
    float *dW = linear_weight(&m->grads, lin) + wo;
    const float *W = linear_weight(&m->params, lin) + wo;
    Format fw = r->f.w;
    float k = m->recipe.dge_k;
    double raw = 0.0, dge = 0.0;
    #pragma omp parallel for reduction(+:raw, dge)
    for (int j = 0; j < M; j++) {
        for (int i = 0; i < K; i++) {
            size_t e = (size_t)j * K + i;
            float corr = 1.0f;
            if (r->dge) corr = dge_factor(W[e], sw[j], fw, k);
            dW[e] += dwq[e] * corr;
            raw += (double)dwq[e] * dwq[e]; dge += (double)(dwq[e] * corr) * (dwq[e] * corr);
        }
    }
    if (q) { q->dw_raw = sqrt(raw); q->dw_dge = sqrt(dge); }
    if (r->occ && m->recipe.occ_comp == OCC_COMP_BF16) {  // the compensation's own gradient: G^T R, over R's nonzeros
        const float *resid = m->acts.xresid[lin] + (size_t)layer * N * K;
        #pragma omp parallel for
        for (int j = 0; j < M; j++) {
            for (int n = 0; n < N; n++) {
                float gv = dout[(size_t)n * M + j];
                const float *rn = resid + (size_t)n * K;
                for (int i = 0; i < K; i++) if (rn[i] != 0.0f) dW[(size_t)j * K + i] += gv * rn[i];
            }
        }
    }
    float *db = linear_bias(&m->grads, lin);
    if (db) {
        db += (size_t)layer * M;
        #pragma omp parallel for
        for (int j = 0; j < M; j++) {
            float sum = 0.0f;
            for (int n = 0; n < N; n++) sum += dout[(size_t)n * M + j];
            db[j] += sum;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// layers

static void encoder_forward(Model *m, float *out, const int *tokens, int B, int T) {
    const Config *c = &m->cfg;
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            float *o = out + ((size_t)b * T + t) * c->C;
            const float *e = m->params.wte + (size_t)tokens[b * T + t] * c->C;
            const float *p = m->params.wpe ? m->params.wpe + (size_t)t * c->C : NULL;
            for (int i = 0; i < c->C; i++) o[i] = e[i] + (p ? p[i] : 0.0f);
        }
    }
}

static void encoder_backward(Model *m, const float *dout, const int *tokens, int B, int T) {
    const Config *c = &m->cfg;
    #pragma omp parallel for  // over channels: rows of wte/wpe are shared between positions
    for (int i = 0; i < c->C; i++) {
        for (int n = 0; n < B * T; n++) {
            float d = dout[(size_t)n * c->C + i];
            m->grads.wte[(size_t)tokens[n] * c->C + i] += d;
            if (m->grads.wpe) m->grads.wpe[(size_t)(n % T) * c->C + i] += d;
        }
    }
}

// LayerNorm (b != NULL) or RMSNorm (b == NULL, mean unused) over rows of width C
static void norm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w, const float *b,
                         int N, int C, float eps) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float mu = 0.0f;
        if (b) { for (int i = 0; i < C; i++) mu += x[i]; mu /= C; }
        float var = 0.0f;
        for (int i = 0; i < C; i++) { float d = x[i] - mu; var += d * d; }
        float s = 1.0f / sqrtf(var / C + eps);
        float *o = out + (size_t)n * C;
        for (int i = 0; i < C; i++) o[i] = (x[i] - mu) * s * w[i] + (b ? b[i] : 0.0f);
        if (mean) mean[n] = mu;
        rstd[n] = s;
    }
}

// dinp = d(norm)/dx; dw, db accumulate
static void norm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp, const float *w,
                          const float *mean, const float *rstd, int N, int C, int layernorm) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        float mu = layernorm ? mean[n] : 0.0f, s = rstd[n];
        float dmean = 0.0f, dnorm_norm = 0.0f;
        for (int i = 0; i < C; i++) {
            float dnorm = w[i] * dy[i];
            dmean += dnorm;
            dnorm_norm += dnorm * (x[i] - mu) * s;
        }
        dmean = layernorm ? dmean / C : 0.0f;
        dnorm_norm /= C;
        float *dx = dinp + (size_t)n * C;
        for (int i = 0; i < C; i++) {
            float norm = (x[i] - mu) * s;
            dx[i] = (w[i] * dy[i] - dmean - norm * dnorm_norm) * s;
        }
    }
    #pragma omp parallel for  // over channels: the weight gradient sums over rows
    for (int i = 0; i < C; i++) {
        float sw = 0.0f, sb = 0.0f;
        for (int n = 0; n < N; n++) {
            float mu = layernorm ? mean[n] : 0.0f;
            float dy = dout[(size_t)n * C + i];
            sw += dy * (inp[(size_t)n * C + i] - mu) * rstd[n];
            sb += dy;
        }
        dw[i] += sw;
        if (db) db[i] += sb;
    }
}

// RoPE on the q and k heads of qkv (N, QKV) in place; sign -1 applies the inverse (backward)
static void rope(Model *m, float *qkv, int B, int T, float sign) {
    const Config *c = &m->cfg;
    int hd = config_hd(c), QKV = config_qkv(c), heads = c->H + c->KV;
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            float *row = qkv + ((size_t)b * T + t) * QKV;
            const float *cs = m->rope_cos + (size_t)t * hd / 2, *sn = m->rope_sin + (size_t)t * hd / 2;
            for (int h = 0; h < heads; h++) {
                float *x = row + (size_t)h * hd;
                for (int i = 0; i < hd / 2; i++) {
                    float x0 = x[2 * i], x1 = x[2 * i + 1], s = sign * sn[i];
                    x[2 * i] = x0 * cs[i] - x1 * s;
                    x[2 * i + 1] = x0 * s + x1 * cs[i];
                }
            }
        }
    }
}

// causal attention with grouped-query heads: qkv (N, QKV) -> out (N, C), att (B, H, T, T). The
// fp8 core (attention_fp8.h) first quantizes q, k and v in qkv; att stays the exact softmax of the
// quantized q and k (what the backward differentiates, as the GPU's BF16 backward does), and out
// comes from E4M3 P and V codes, key block by key block as on the GPU.
static void attention_forward(const Config *c, float *out, float *att, float *qkv, int B, int T, int fp8) {
    int hd = config_hd(c), QKV = config_qkv(c), H = c->H, KV = c->KV, group = c->H / c->KV, heads = H + 2 * KV;
    float scale = 1.0f / sqrtf((float)hd);
    int *e = NULL, *ev = NULL;  // fp8: each head row's exponent; V's by (b, kv head, t)
    if (fp8) {
        e = (int *)malloc_check((size_t)B * T * heads * sizeof(int));
        ev = (int *)malloc_check((size_t)B * KV * T * sizeof(int));
        att8_quantize_heads(qkv, e, B * T, heads, hd);
        att8_value_exponents(ev, e, B, T, H, KV);
    }
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < H; h++) {
            const float *base = qkv + (size_t)b * T * QKV;
            int koff = (H + h / group) * hd, voff = (H + KV + h / group) * hd;
            for (int t = 0; t < T; t++) {
                const float *q = base + (size_t)t * QKV + h * hd;
                float *a = att + (((size_t)b * H + h) * T + t) * T;
                float maxv = -INFINITY;
                for (int t2 = 0; t2 <= t; t2++) {
                    const float *k = base + (size_t)t2 * QKV + koff;
                    float s = 0.0f;
                    for (int i = 0; i < hd; i++) s += q[i] * k[i];
                    a[t2] = s * scale;
                    if (a[t2] > maxv) maxv = a[t2];
                }
                float sum = 0.0f;
                for (int t2 = 0; t2 <= t; t2++) { a[t2] = expf(a[t2] - maxv); sum += a[t2]; }
                for (int t2 = 0; t2 <= t; t2++) a[t2] /= sum;
                for (int t2 = t + 1; t2 < T; t2++) a[t2] = 0.0f;
                float *o = out + ((size_t)b * T + t) * c->C + h * hd;
                if (fp8) {
                    att8_forward(o, q, base + koff, base + voff, ev + ((size_t)b * KV + h / group) * T, QKV, t, hd);
                    continue;
                }
                for (int i = 0; i < hd; i++) o[i] = 0.0f;
                for (int t2 = 0; t2 <= t; t2++) {
                    const float *v = base + (size_t)t2 * QKV + voff;
                    for (int i = 0; i < hd; i++) o[i] += a[t2] * v[i];
                }
            }
        }
    }
    free(e); free(ev);
}

// dqkv (N, QKV) = gradient of attention; parallel over key/value heads, whose gradients the
// query heads of a group share
static void attention_backward(const Config *c, float *dqkv, const float *dout, const float *att, const float *qkv,
                               int B, int T) {
    int hd = config_hd(c), QKV = config_qkv(c), H = c->H, group = c->H / c->KV;
    float scale = 1.0f / sqrtf((float)hd);
    memset(dqkv, 0, (size_t)B * T * QKV * sizeof(float));
    #pragma omp parallel
    {
        float *datt = (float *)malloc_check((size_t)T * sizeof(float));
        #pragma omp for collapse(2)
        for (int b = 0; b < B; b++) {
            for (int kv = 0; kv < c->KV; kv++) {
                const float *base = qkv + (size_t)b * T * QKV;
                float *dbase = dqkv + (size_t)b * T * QKV;
                int koff = (H + kv) * hd, voff = (H + c->KV + kv) * hd;
                for (int h = kv * group; h < (kv + 1) * group; h++) {
                    for (int t = 0; t < T; t++) {
                        const float *a = att + (((size_t)b * H + h) * T + t) * T;
                        const float *dy = dout + ((size_t)b * T + t) * c->C + h * hd;
                        const float *q = base + (size_t)t * QKV + h * hd;
                        float *dq = dbase + (size_t)t * QKV + h * hd;
                        float dot = 0.0f;
                        for (int t2 = 0; t2 <= t; t2++) {
                            const float *v = base + (size_t)t2 * QKV + voff;
                            float *dv = dbase + (size_t)t2 * QKV + voff;
                            float s = 0.0f;
                            for (int i = 0; i < hd; i++) { s += dy[i] * v[i]; dv[i] += a[t2] * dy[i]; }
                            datt[t2] = s;
                            dot += a[t2] * s;
                        }
                        for (int t2 = 0; t2 <= t; t2++) {
                            float dp = a[t2] * (datt[t2] - dot) * scale;  // softmax backward
                            const float *k = base + (size_t)t2 * QKV + koff;
                            float *dk = dbase + (size_t)t2 * QKV + koff;
                            for (int i = 0; i < hd; i++) { dq[i] += dp * k[i]; dk[i] += dp * q[i]; }
                        }
                    }
                }
            }
        }
        free(datt);
    }
}

#define GELU_K 0.7978845608028654f  // sqrt(2/pi)

static void gelu_forward(float *out, const float *inp, size_t n) {
    #pragma omp parallel for
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + tanhf(GELU_K * (x + 0.044715f * x * x * x)));
    }
}

static void gelu_backward(float *dinp, const float *inp, const float *dout, size_t n) {
    #pragma omp parallel for
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float th = tanhf(GELU_K * (x + 0.044715f * x * x * x));
        float sech2 = 1.0f - th * th;
        float local = 0.5f * (1.0f + th) + 0.5f * x * sech2 * GELU_K * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] = local * dout[i];
    }
}

// out (N, F) = silu(gate) * up, with inp (N, 2F) = [gate | up]
static void swiglu_forward(float *out, const float *inp, int N, int F) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        for (int i = 0; i < F; i++) {
            float g = inp[(size_t)n * 2 * F + i], u = inp[(size_t)n * 2 * F + F + i];
            out[(size_t)n * F + i] = g / (1.0f + expf(-g)) * u;
        }
    }
}

static void swiglu_backward(float *dinp, const float *inp, const float *dout, int N, int F) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        for (int i = 0; i < F; i++) {
            float g = inp[(size_t)n * 2 * F + i], u = inp[(size_t)n * 2 * F + F + i];
            float sig = 1.0f / (1.0f + expf(-g)), d = dout[(size_t)n * F + i];
            dinp[(size_t)n * 2 * F + i] = d * u * sig * (1.0f + g * (1.0f - sig));
            dinp[(size_t)n * 2 * F + F + i] = d * g * sig;
        }
    }
}

// softmax over the first V logits and cross-entropy; losses NULL-safe targets
static void crossentropy_forward(float *probs, float *losses, const float *logits, const int *targets,
                                 int N, int V, int Vp) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *lg = logits + (size_t)n * Vp;
        float *p = probs + (size_t)n * Vp;
        float maxv = -INFINITY;
        for (int i = 0; i < V; i++) if (lg[i] > maxv) maxv = lg[i];
        double sum = 0.0;  // 50k terms: a float sum would carry ~1e-5 relative error
        for (int i = 0; i < V; i++) { p[i] = expf(lg[i] - maxv); sum += p[i]; }
        float inv = (float)(1.0 / sum);
        for (int i = 0; i < V; i++) p[i] *= inv;
        for (int i = V; i < Vp; i++) p[i] = 0.0f;
        if (targets) losses[n] = -logf(p[targets[n]]);
    }
}

// ---------------------------------------------------------------------------------------------
// forward and backward, chained by hand

// targets may be NULL (inference); returns the mean loss or -1
static float model_forward(Model *m, const int *inputs, const int *targets, int B, int T) {
    const Config *c = &m->cfg;
    if (T > c->T) die("sequence length %d exceeds the model's maximum %d", T, c->T);
    model_alloc_acts(m, B, T);
    for (int i = 0; i < B * T; i++) {
        if (inputs[i] < 0 || inputs[i] >= c->V || (targets && (targets[i] < 0 || targets[i] >= c->V)))
            die("token id out of range at position %d", i);
    }
    m->inputs = (int *)inputs; m->targets = (int *)targets;
    int N = B * T, C = c->C, QKV = config_qkv(c), FF = config_ff(c), F = c->F;
    int gpt2 = c->arch == ARCH_GPT2;
    Acts *a = &m->acts;
    Params *p = &m->params;
    model_quantize_weights(m);
    m->occ_clamped = 0;
    encoder_forward(m, a->encoded, inputs, B, T);
    for (int l = 0; l < c->L; l++) {
        const float *res = l == 0 ? a->encoded : a->res3 + (size_t)(l - 1) * N * C;
        float *ln1 = a->ln1 + (size_t)l * N * C, *qkv = a->qkv + (size_t)l * N * QKV;
        float *atty = a->atty + (size_t)l * N * C, *res2 = a->res2 + (size_t)l * N * C;
        float *ln2 = a->ln2 + (size_t)l * N * C, *fch = a->fch + (size_t)l * N * FF;
        float *fch_act = a->fch_act + (size_t)l * N * F, *res3 = a->res3 + (size_t)l * N * C;
        norm_forward(ln1, a->ln1_mean + (size_t)l * N, a->ln1_rstd + (size_t)l * N, res, p->ln1w + (size_t)l * C,
                     gpt2 ? p->ln1b + (size_t)l * C : NULL, N, C, c->norm_eps);
        linear_forward(m, LIN_QKV, l, qkv, ln1, N);
        if (!gpt2) rope(m, qkv, B, T, 1.0f);
        attention_forward(c, atty, a->att + (size_t)l * B * c->H * T * T, qkv, B, T, m->recipe.attn_fp8);
        linear_forward(m, LIN_ATTPROJ, l, res2, atty, N);
        for (size_t i = 0; i < (size_t)N * C; i++) res2[i] += res[i];
        norm_forward(ln2, a->ln2_mean + (size_t)l * N, a->ln2_rstd + (size_t)l * N, res2, p->ln2w + (size_t)l * C,
                     gpt2 ? p->ln2b + (size_t)l * C : NULL, N, C, c->norm_eps);
        linear_forward(m, LIN_FC, l, fch, ln2, N);
        if (gpt2) gelu_forward(fch_act, fch, (size_t)N * F);
        else swiglu_forward(fch_act, fch, N, F);
        linear_forward(m, LIN_FCPROJ, l, res3, fch_act, N);
        for (size_t i = 0; i < (size_t)N * C; i++) res3[i] += res2[i];
    }
    const float *res = a->res3 + (size_t)(c->L - 1) * N * C;
    norm_forward(a->lnf, a->lnf_mean, a->lnf_rstd, res, p->lnfw, gpt2 ? p->lnfb : NULL, N, C, c->norm_eps);
    matmul_nt(a->logits, a->lnf, gpt2 ? p->wte : p->lmhead, NULL, N, C, c->Vp);
    crossentropy_forward(a->probs, a->losses, a->logits, targets, N, c->V, c->Vp);
    m->loss = -1.0f;
    if (targets) {
        double sum = 0.0;
        for (int i = 0; i < N; i++) sum += a->losses[i];
        m->loss = (float)(sum / N);
    }
    return m->loss;
}

static void model_zero_grad(Model *m) { memset(m->grads_mem, 0, m->nparams * sizeof(float)); }

// accumulates into the gradients the gradient of loss_scale * (mean loss of the last forward)
static void model_backward(Model *m, float loss_scale) {
    const Config *c = &m->cfg;
    if (m->targets == NULL) die("internal: backward without targets");
    int B = m->B, T = m->T, N = B * T, C = c->C, QKV = config_qkv(c), FF = config_ff(c), F = c->F;
    int gpt2 = c->arch == ARCH_GPT2;
    Acts *a = &m->acts;
    Scratch *s = &m->s;
    Params *p = &m->params, *g = &m->grads;
    // dlogits = (softmax - onehot) * dloss, in place of probs; padded columns are already 0
    float dloss = loss_scale / N;
    float *dlogits = a->probs;
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        float *d = dlogits + (size_t)n * c->Vp;
        for (int i = 0; i < c->V; i++) d[i] *= dloss;
        d[m->targets[n]] -= dloss;
    }
    float *head = gpt2 ? p->wte : p->lmhead, *dhead = gpt2 ? g->wte : g->lmhead;
    matmul_tn_acc(dhead, dlogits, a->lnf, N, c->Vp, C);
    memset(s->dln, 0, (size_t)N * C * sizeof(float));
    matmul_nn_acc(s->dln, dlogits, head, N, c->Vp, C);
    const float *res = a->res3 + (size_t)(c->L - 1) * N * C;
    norm_backward(s->dres, g->lnfw, gpt2 ? g->lnfb : NULL, s->dln, res, p->lnfw, a->lnf_mean, a->lnf_rstd, N, C, gpt2);
    for (int l = c->L - 1; l >= 0; l--) {
        const float *resin = l == 0 ? a->encoded : a->res3 + (size_t)(l - 1) * N * C;
        float *qkv = a->qkv + (size_t)l * N * QKV, *res2 = a->res2 + (size_t)l * N * C;
        float *fch = a->fch + (size_t)l * N * FF;
        // MLP: dres flows to the residual and through fcproj, activation, fc, norm 2
        linear_backward(m, LIN_FCPROJ, l, s->dfch_act, s->dres, N);
        if (gpt2) gelu_backward(s->dfch, fch, s->dfch_act, (size_t)N * F);
        else swiglu_backward(s->dfch, fch, s->dfch_act, N, F);
        linear_backward(m, LIN_FC, l, s->dln, s->dfch, N);
        norm_backward(s->datty, g->ln2w + (size_t)l * C, gpt2 ? g->ln2b + (size_t)l * C : NULL, s->dln, res2,
                      p->ln2w + (size_t)l * C, a->ln2_mean + (size_t)l * N, a->ln2_rstd + (size_t)l * N, N, C, gpt2);
        for (size_t i = 0; i < (size_t)N * C; i++) s->dres[i] += s->datty[i];
        // attention: attproj, the attention core, RoPE, qkv, norm 1
        linear_backward(m, LIN_ATTPROJ, l, s->datty, s->dres, N);
        attention_backward(c, s->dqkv, s->datty, a->att + (size_t)l * B * c->H * T * T, qkv, B, T);
        if (!gpt2) rope(m, s->dqkv, B, T, -1.0f);
        linear_backward(m, LIN_QKV, l, s->dln, s->dqkv, N);
        norm_backward(s->datty, g->ln1w + (size_t)l * C, gpt2 ? g->ln1b + (size_t)l * C : NULL, s->dln, resin,
                      p->ln1w + (size_t)l * C, a->ln1_mean + (size_t)l * N, a->ln1_rstd + (size_t)l * N, N, C, gpt2);
        for (size_t i = 0; i < (size_t)N * C; i++) s->dres[i] += s->datty[i];
    }
    encoder_backward(m, s->dres, m->inputs, B, T);
}

// ---------------------------------------------------------------------------------------------
// optimizer

static double grad_norm(const Model *m) {
    double sum = 0.0;
    #pragma omp parallel for reduction(+:sum)
    for (size_t i = 0; i < m->nparams; i++) sum += (double)m->grads_mem[i] * m->grads_mem[i];
    return sqrt(sum);
}

// AdamW (SPEC.md 5); step t counts from 1. Returns the gradient norm before clipping.
static float model_update(Model *m, float lr, float b1, float b2, float eps, float wd, float clip, int t) {
    double norm = grad_norm(m);
    float gscale = (clip > 0.0f && norm > clip) ? (float)(clip / norm) : 1.0f;
    float c1 = 1.0f - powf(b1, (float)t), c2 = 1.0f - powf(b2, (float)t);
    const ParamKind *order; int n = param_order(&m->cfg, &order);
    size_t off = 0;
    for (int j = 0; j < n; j++) {
        int shape[3]; size_t size = param_shape(&m->cfg, order[j], shape);
        float decay = param_decays(order[j]) ? wd : 0.0f;
        #pragma omp parallel for
        for (size_t i = off; i < off + size; i++) {
            float gr = m->grads_mem[i] * gscale;
            float mi = b1 * m->m_mem[i] + (1.0f - b1) * gr;
            float vi = b2 * m->v_mem[i] + (1.0f - b2) * gr * gr;
            m->m_mem[i] = mi; m->v_mem[i] = vi;
            float mh = mi / c1, vh = vi / c2;
            m->params_mem[i] -= lr * (mh / (sqrtf(vh) + eps) + decay * m->params_mem[i]);
        }
        off += size;
    }
    return (float)norm;
}

static void model_free(Model *m) {
    free(m->params_mem); free(m->grads_mem); free(m->m_mem); free(m->v_mem);
    for (int l = 0; l < NUM_LINEARS; l++) { free(m->qw[l].codes); free(m->qw[l].deq); free(m->qw[l].scales); }
    free(m->rope_cos); free(m->rope_sin); free(m->acts_mem); free(m->scratch_mem);
}

#ifndef TESTING
static float evaluate(Model *m, DataLoader *val, int steps) {
    dataloader_reset(val);
    double sum = 0.0;
    for (int i = 0; i < steps; i++) {
        dataloader_next(val);
        sum += model_forward(m, val->inputs, val->targets, val->B, val->T);
    }
    return (float)(sum / steps);
}

// samples gen_tokens tokens after <|endoftext|>, re-running the forward on the growing prefix
static void sample(Model *m, Run *run, int gen_tokens) {
    int B = run->train.B, T = run->train.T;
    int *gen = (int *)calloc_check((size_t)B * T, sizeof(int));
    int eot = run->have_tok ? (int)run->tok.eot : m->cfg.V - 1;
    for (int i = 0; i < B * T; i++) gen[i] = eot;
    int n = gen_tokens < T ? gen_tokens : T - 1;
    printf("generating:\n---\n");
    for (int t = 1; t <= n; t++) {
        model_forward(m, gen, NULL, B, T);
        const float *p = m->acts.probs + (size_t)(t - 1) * m->cfg.Vp;
        float coin = rng_next_uniform(&run->rng), cdf = 0.0f;
        int next = m->cfg.V - 1;
        for (int i = 0; i < m->cfg.V; i++) { cdf += p[i]; if (coin <= cdf) { next = i; break; } }
        gen[t] = next;
        if (run->have_tok) tokenizer_print(&run->tok, (uint32_t)next); else printf("%d ", next);
        fflush(stdout);
    }
    printf("\n---\n");
    free(gen);
}

int main(int argc, char **argv) {
    Args a = args_defaults("gpt2:L=4,C=128,H=4,T=256", "fp32");
    int threads = 0;
    Flag flags[MAX_FLAGS];
    int nflags = args_flags(&a, flags);
    flags[nflags++] = (Flag){ "--threads", FLAG_INT, &threads, "OpenMP threads (0: default)" };
    setvbuf(stdout, NULL, _IOLBF, 0);  // one line per step, also when piped to a log
    parse_flags(argc, argv, flags, nflags, "./train_gpt2", "CPU reference trainer for GPT-2 and LLaMA (SPEC.md)");
    check_args(&a);
    if (threads < 0) die("--threads must be >= 0");
    RecipeOptions ro = recipe_options(&a);
#ifdef _OPENMP
    if (threads > 0) omp_set_num_threads(threads);
#endif
    if (a.out_dir && mkdir(a.out_dir, 0755) != 0 && errno != EEXIST) die("cannot create %s: %s", a.out_dir, strerror(errno));

    // model: from a descriptor, a checkpoint, or the latest checkpoint of -o when resuming
    Model m;
    Config cfg;
    TrainState st = { 0, 0, 0, 0 };
    int resume_step = run_resume_step(&a);
    char path[1100];
    const char *model_path = run_model_path(&a, resume_step, path, sizeof(path));
    if (model_path) {
        int step;
        float *params = checkpoint_read_model(model_path, &cfg, &step);
        model_alloc_params(&m, &cfg);
        memcpy(m.params_mem, params, m.nparams * sizeof(float));
        free(params);
        if (resume_step >= 0) {
            checkpoint_read_state(a.out_dir, resume_step, &st, m.m_mem, m.v_mem, m.nparams, 0, m.nparams);
            if (st.step != step) die("%s: state step %d does not match the model's %d", a.out_dir, st.step, step);
        }
    } else {
        cfg = config_parse(a.model);
        model_init(&m, &cfg, (uint64_t)a.seed);
    }
    model_set_recipe(&m, &ro);
    if (a.T > cfg.T) die("sequence length -t %d exceeds the model's maximum T = %d", a.T, cfg.T);
    int accum = a.total_batch > 0 ? a.total_batch / (a.B * a.T) : 1;
    char desc[256];
    config_describe(&cfg, desc, sizeof(desc));
    printf("model %s, %zu parameters\n", desc, m.nparams);
    recipe_print(a.recipe, &m.recipe);
    printf("batch %d x %d, %d micro-step(s) per step, %d steps\n", a.B, a.T, accum, a.max_steps);

    Run run;
    run_open(&run, &a, &cfg, &st, resume_step >= 0, 0, 1, accum);
    QStats *qstats = a.quant_stats ? (QStats *)calloc_check((size_t)cfg.L * NUM_LINEARS, sizeof(QStats)) : NULL;

    for (int step = st.step; step <= a.max_steps; step++) {
        int last = step == a.max_steps;
        if (run_eval_due(&a, step)) run_report_eval(&run, step, (long long)step * accum * a.B * a.T, evaluate(&m, &run.val, a.val_steps));
        if (run_sample_due(&a, step)) sample(&m, &run, a.gen_tokens);
        if (run_ckpt_due(&a, step, st.step)) {
            TrainState now = { step, run.train.shard, run.train.pos, run.rng.counter };
            checkpoint_write_state(a.out_dir, step, 0, 1, &now, m.m_mem, m.v_mem, m.nparams, 0, m.nparams);
            run_model_file(&a, step, path, sizeof(path));
            checkpoint_write_model(path, &cfg, m.params_mem, step);
            printf("wrote %s\n", path);
        }
        if (last) break;
        double t0 = now_seconds();
        model_zero_grad(&m);
        double loss = 0.0;
        for (int micro = 0; micro < accum; micro++) {
            m.qstats = micro == 0 && qstats && step % a.quant_stats == 0 ? qstats : NULL;  // the step's first micro-batch
            dataloader_next(&run.train);
            loss += model_forward(&m, run.train.inputs, run.train.targets, a.B, a.T) / accum;
            model_backward(&m, 1.0f / accum);
            for (int i = 0; m.qstats && i < cfg.L * NUM_LINEARS; i++)
                logger_quant(&run.lg, step, i / NUM_LINEARS, linear_names[i % NUM_LINEARS],
                             format_name(m.recipe.lin[i % NUM_LINEARS].f.x), &qstats[i]);
            m.qstats = NULL;
        }
        float lr = lr_schedule(a.lr, step, a.warmup, a.max_steps, a.final_frac);
        float norm = model_update(&m, lr, a.b1, a.b2, 1e-8f, a.wd, a.clip, step + 1);
        double ms = (now_seconds() - t0) * 1e3;
        double tok_s = (double)accum * a.B * a.T / (ms / 1e3);
        printf("step %5d/%d | loss %.6f | norm %.4f | lr %.2e | %.1f ms | %.0f tok/s\n", step + 1, a.max_steps, loss, norm, lr, ms, tok_s);
        logger_train(&run.lg, step + 1, (long long)(step + 1) * accum * a.B * a.T, (float)loss, norm, lr, ms, tok_s);
        if (!isfinite(loss)) die("loss is %f at step %d: diverged", loss, step + 1);
    }
    run_close(&run);
    free(qstats);
    model_free(&m);
    return 0;
}
#endif
