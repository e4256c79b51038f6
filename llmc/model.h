// defines: Config, config_parse, config_describe, ParamKind, param_shape, param_order,
//          param_decays, param_group, param_init_std, param_count, params_init, LIN_QKV .. NUM_LINEARS,
//          linear_names, linear_dims, linear_wkind, linear_bkind
// The model description shared by both trainers and the checkpoint format (SPEC.md 1-2): the
// configuration, and the parameter tensors of each architecture in their one fixed order.
#ifndef LLMC_MODEL_H
#define LLMC_MODEL_H

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include "utils.h"
#include "rand.h"

enum { ARCH_GPT2 = 1, ARCH_LLAMA = 2 };

typedef struct {
    int arch;       // ARCH_GPT2 or ARCH_LLAMA
    int V, Vp;      // vocabulary, padded to a multiple of 128
    int T;          // max sequence length
    int L, H, KV;   // layers, query heads, key/value heads
    int C, F;       // width, MLP hidden width
    float rope_theta, norm_eps;
} Config;

static int config_hd(const Config *c) { return c->C / c->H; }
static int config_qkv(const Config *c) { return (c->H + 2 * c->KV) * config_hd(c); }  // qkv rows
static int config_ff(const Config *c) { return c->arch == ARCH_LLAMA ? 2 * c->F : c->F; } // fc rows

// checks every invariant the kernels rely on; returns NULL or a message
static const char *config_check(const Config *c) {
    if (c->arch != ARCH_GPT2 && c->arch != ARCH_LLAMA) return "unknown architecture";
    if (c->V < 2 || c->V > 65536) return "vocabulary size must be in 2..65536 (tokens are uint16)";
    if (c->Vp < c->V || c->Vp % 128 != 0) return "padded vocabulary must be >= V and a multiple of 128";
    if (c->T < 1 || c->T > 1 << 20) return "sequence length T must be in 1..2^20";
    if (c->L < 1 || c->L > 1024) return "layers L must be in 1..1024";
    if (c->H < 1 || c->KV < 1 || c->H % c->KV != 0) return "heads: need H >= 1, KV >= 1, H divisible by KV";
    if (c->arch == ARCH_GPT2 && c->KV != c->H) return "GPT-2 has no grouped-query attention (KV must equal H)";
    if (c->C < 2 || c->C % c->H != 0 || (c->C / c->H) % 2 != 0) return "width C must be a positive multiple of H with an even head dim";
    if (c->F < 1) return "MLP width F must be positive";
    if (!(c->norm_eps > 0) || !(c->rope_theta > 0)) return "norm eps and rope theta must be positive";
    return NULL;
}

// descriptor: "gpt2:d12", "llama:d16", or explicit/overriding fields "gpt2:d12,T=256",
// "llama:L=2,C=64,H=4,KV=2,F=192,T=64". Dies with a one-line message on anything malformed.
static Config config_parse(const char *desc) {
    Config c = {0};
    const char *colon = strchr(desc, ':');
    if (colon == NULL) die("model descriptor '%s': expected arch:fields, e.g. gpt2:d12 or llama:d16", desc);
    size_t alen = (size_t)(colon - desc);
    if (alen == 4 && strncmp(desc, "gpt2", 4) == 0) c.arch = ARCH_GPT2;
    else if (alen == 5 && strncmp(desc, "llama", 5) == 0) c.arch = ARCH_LLAMA;
    else die("model descriptor '%s': unknown architecture (gpt2 or llama)", desc);
    c.V = 50257; c.norm_eps = 1e-5f; c.rope_theta = 10000.0f;
    int set_f = 0, set_kv = 0;
    char buf[256];
    if (strlen(colon + 1) >= sizeof(buf)) die("model descriptor '%s' is too long", desc);
    strcpy(buf, colon + 1);
    for (char *tok = strtok(buf, ","); tok != NULL; tok = strtok(NULL, ",")) {
        char *end;
        if (tok[0] == 'd' && tok[1] >= '0' && tok[1] <= '9') {  // depth preset
            long n = strtol(tok + 1, &end, 10);
            if (*end != '\0' || n < 1 || n > 1024) die("model descriptor '%s': bad depth '%s'", desc, tok);
            c.L = (int)n;
            if (c.arch == ARCH_GPT2) {  // the four GPT-2 sizes, else 64-wide heads
                c.C = n == 24 ? 1024 : n == 36 ? 1280 : n == 48 ? 1600 : 64 * (int)n;
                c.H = n == 24 ? 16 : n == 36 ? 20 : n == 48 ? 25 : (int)n;
                c.KV = c.H; c.T = 1024;
            } else {
                c.C = 128 * (int)n; c.H = 2 * (int)n; c.KV = n / 2 > 1 ? (int)n / 2 : 1; c.T = 2048;
            }
            continue;
        }
        char *eq = strchr(tok, '=');
        if (eq == NULL) die("model descriptor '%s': expected key=value, got '%s'", desc, tok);
        *eq = '\0';
        long v = strtol(eq + 1, &end, 10);
        if (eq[1] == '\0' || *end != '\0' || v < 1 || v > (1L << 30)) die("model descriptor '%s': bad value for %s", desc, tok);
        if (strcmp(tok, "L") == 0) c.L = (int)v;
        else if (strcmp(tok, "C") == 0) c.C = (int)v;
        else if (strcmp(tok, "H") == 0) c.H = (int)v;
        else if (strcmp(tok, "KV") == 0) { c.KV = (int)v; set_kv = 1; }
        else if (strcmp(tok, "F") == 0) { c.F = (int)v; set_f = 1; }
        else if (strcmp(tok, "T") == 0) c.T = (int)v;
        else if (strcmp(tok, "V") == 0) c.V = (int)v;
        else die("model descriptor '%s': unknown key '%s' (L C H KV F T V)", desc, tok);
    }
    if (c.L == 0 || c.C == 0 || c.H == 0 || c.T == 0) die("model descriptor '%s': needs dN or all of L, C, H, T", desc);
    if (c.arch == ARCH_GPT2 && !set_kv) c.KV = c.H;
    if (c.KV == 0) c.KV = c.H;
    if (!set_f) c.F = c.arch == ARCH_GPT2 ? 4 * c.C : 256 * (int)ceil((8.0 * c.C / 3.0) / 256.0);
    c.Vp = (c.V + 127) / 128 * 128;
    const char *err = config_check(&c);
    if (err) die("model descriptor '%s': %s", desc, err);
    return c;
}

static void config_describe(const Config *c, char *out, size_t n) {
    snprintf(out, n, "%s:L=%d,C=%d,H=%d,KV=%d,F=%d,T=%d,V=%d", c->arch == ARCH_GPT2 ? "gpt2" : "llama",
             c->L, c->C, c->H, c->KV, c->F, c->T, c->V);
}

// ---------------------------------------------------------------------------------------------
// parameter tensors: every kind either architecture has, then each architecture's order

typedef enum {
    P_WTE, P_WPE, P_LN1W, P_LN1B, P_QKVW, P_QKVB, P_ATTPROJW, P_ATTPROJB, P_LN2W, P_LN2B,
    P_FCW, P_FCB, P_FCPROJW, P_FCPROJB, P_LNFW, P_LNFB, P_LMHEAD, NUM_PARAM_KINDS
} ParamKind;

static const char *const param_names[NUM_PARAM_KINDS] = {
    "wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb", "ln2w", "ln2b",
    "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb", "lmhead"
};

static const ParamKind gpt2_order[] = { P_WTE, P_WPE, P_LN1W, P_LN1B, P_QKVW, P_QKVB, P_ATTPROJW,
    P_ATTPROJB, P_LN2W, P_LN2B, P_FCW, P_FCB, P_FCPROJW, P_FCPROJB, P_LNFW, P_LNFB };
static const ParamKind llama_order[] = { P_WTE, P_LN1W, P_QKVW, P_ATTPROJW, P_LN2W, P_FCW,
    P_FCPROJW, P_LNFW, P_LMHEAD };

// the tensors of c's architecture in file order; returns how many
static int param_order(const Config *c, const ParamKind **order) {
    if (c->arch == ARCH_GPT2) { *order = gpt2_order; return (int)(sizeof(gpt2_order) / sizeof(gpt2_order[0])); }
    *order = llama_order; return (int)(sizeof(llama_order) / sizeof(llama_order[0]));
}

// shape of a tensor kind (dims in shape[0..2]); returns the element count
static size_t param_shape(const Config *c, ParamKind k, int shape[3]) {
    shape[0] = shape[1] = shape[2] = 1;
    switch (k) {
        case P_WTE: case P_LMHEAD: shape[0] = c->Vp; shape[1] = c->C; break;
        case P_WPE: shape[0] = c->T; shape[1] = c->C; break;
        case P_LN1W: case P_LN1B: case P_LN2W: case P_LN2B: case P_ATTPROJB: case P_FCPROJB:
            shape[0] = c->L; shape[1] = c->C; break;
        case P_QKVW: shape[0] = c->L; shape[1] = config_qkv(c); shape[2] = c->C; break;
        case P_QKVB: shape[0] = c->L; shape[1] = config_qkv(c); break;
        case P_ATTPROJW: shape[0] = c->L; shape[1] = c->C; shape[2] = c->C; break;
        case P_FCW: shape[0] = c->L; shape[1] = config_ff(c); shape[2] = c->C; break;
        case P_FCB: shape[0] = c->L; shape[1] = config_ff(c); break;
        case P_FCPROJW: shape[0] = c->L; shape[1] = c->C; shape[2] = c->F; break;
        case P_LNFW: case P_LNFB: shape[0] = c->C; break;
        default: die("internal: bad parameter kind %d", (int)k);
    }
    return (size_t)shape[0] * shape[1] * shape[2];
}

// the block linears, each with an (out_features M, in_features K) weight per layer
enum { LIN_QKV, LIN_ATTPROJ, LIN_FC, LIN_FCPROJ, NUM_LINEARS };
static const char *const linear_names[NUM_LINEARS] = { "qkv", "attproj", "fc", "fcproj" };
static const ParamKind linear_wkind[NUM_LINEARS] = { P_QKVW, P_ATTPROJW, P_FCW, P_FCPROJW };
static const ParamKind linear_bkind[NUM_LINEARS] = { P_QKVB, P_ATTPROJB, P_FCB, P_FCPROJB };  // GPT-2

static void linear_dims(const Config *c, int l, int *M, int *K) {
    switch (l) {
        case LIN_QKV: *M = config_qkv(c); *K = c->C; break;
        case LIN_ATTPROJ: *M = c->C; *K = c->C; break;
        case LIN_FC: *M = config_ff(c); *K = c->C; break;
        default: *M = c->C; *K = c->F; break;
    }
}

// when a tensor's gradient is complete in the backward: the final norm's and the LM head's first,
// the blocks' layer by layer (their shape[0] is L), the embeddings' last
enum { PG_HEAD, PG_LAYER, PG_EMBED };
static int param_group(ParamKind k) {
    if (k == P_WTE || k == P_WPE) return PG_EMBED;
    return k == P_LNFW || k == P_LNFB || k == P_LMHEAD ? PG_HEAD : PG_LAYER;
}

static int param_decays(ParamKind k) {
    return k == P_WTE || k == P_WPE || k == P_LMHEAD || k == P_QKVW || k == P_ATTPROJW ||
           k == P_FCW || k == P_FCPROJW;
}

// init: std of the normal draw, or -1 for ones (norm weights), 0 for zeros (biases)
static double param_init_std(const Config *c, ParamKind k) {
    switch (k) {
        case P_WTE: case P_WPE: case P_LMHEAD: case P_QKVW: case P_FCW: return 0.02;
        case P_ATTPROJW: case P_FCPROJW: return 0.02 / sqrt(2.0 * c->L);
        case P_LN1W: case P_LN2W: case P_LNFW: return -1.0;
        default: return 0.0;
    }
}

static size_t param_count(const Config *c) {
    const ParamKind *order; int n = param_order(c, &order);
    size_t total = 0; int shape[3];
    for (int i = 0; i < n; i++) total += param_shape(c, order[i], shape);
    return total;
}

// fills the parameter buffer (file order) with the counter-based init of SPEC.md 2: element i of
// tensor j is a pure function of (seed, j, i), the same on every implementation and device
static void params_init(const Config *c, float *mem, uint64_t seed) {
    const ParamKind *order; int n = param_order(c, &order);
    for (int j = 0; j < n; j++) {
        ParamKind k = order[j];
        int shape[3]; size_t size = param_shape(c, k, shape);
        double std = param_init_std(c, k);
        uint64_t key = rng_hash(seed, (uint64_t)j);
        size_t live = (k == P_WTE || k == P_LMHEAD) ? (size_t)c->V * c->C : size;  // padded rows stay 0
        #pragma omp parallel for
        for (size_t i = 0; i < size; i++) {
            mem[i] = std < 0 ? 1.0f : (std == 0 || i >= live) ? 0.0f : (float)(std * rng_normal(key, i));
        }
        mem += size;
    }
}

#endif
