// defines: RefFile, ref_open, ref_free, Record, read_record, compare
// Reads the reference-state files of dev/reference/ (SPEC.md 6) for the CPU and GPU tests.
// Error of a tensor: max |x - ref| / max |ref| over the stored elements, and the relative
// difference of the sum of squares over the whole tensor.
#ifndef TEST_REF_FILE_H
#define TEST_REF_FILE_H

#include <math.h>
#include <string.h>
#include "../llmc/utils.h"
#include "../llmc/model.h"
#include "../llmc/recipe.h"

#define REF_MAGIC 20261124

typedef struct {
    Config cfg;
    RecipeOptions ro;
    int B, T, S;              // batch, sequence length, optimizer steps
    uint64_t seed;
    float hp[6];              // lr, beta1, beta2, eps, weight decay, clip
    int *inputs, *targets;    // (B, T)
    float *losses, *norms;    // (S)
} RefFile;

// reads the header and the arrays before the records; returns the file positioned at the first record
static FILE *ref_open(RefFile *r, const char *path) {
    int h[256];
    long long size;
    FILE *f = open_with_header(path, h, REF_MAGIC, 1, "reference state file", &size);
    Config *c = &r->cfg;
    c->arch = h[2]; c->V = h[3]; c->Vp = h[4]; c->T = h[5]; c->L = h[6]; c->H = h[7]; c->KV = h[8]; c->C = h[9]; c->F = h[10];
    memcpy(&c->rope_theta, h + 32, 4); memcpy(&c->norm_eps, h + 33, 4);
    const char *err = config_check(c);
    if (err) die("%s: %s", path, err);
    r->B = h[11]; r->T = h[12]; r->S = h[20]; r->seed = (uint64_t)(uint32_t)h[21];
    if (h[13] < 0 || h[13] >= NUM_RECIPES || h[15] < 0 || h[15] > 2 || h[16] < 0 || h[16] > 2 || r->B < 1 || r->T < 1 ||
        r->T > c->T || r->S < 1)
        die("%s: bad header", path);
    RecipeOptions *o = &r->ro;
    // occ: 0 off, 1 with the BF16 compensation, 2 with the compensation in the operand
    o->recipe = h[13]; o->dge = h[14]; o->occ = h[15] > 0; o->occ_comp = h[15] == 2 ? OCC_COMP_OPERAND : OCC_COMP_BF16;
    o->fp4_layout = (Format)(FMT_E2M1 + h[16]);
    o->fp4_attn = h[17]; o->tensorwise = h[18]; o->attn_fp8 = 0; o->grad_format = h[19] ? FMT_E5M2 : FMT_E4M3;
    memcpy(&o->occ_alpha, h + 34, 4); memcpy(&o->dge_k, h + 35, 4);
    memcpy(r->hp, h + 36, sizeof(r->hp));
    size_t n = (size_t)r->B * r->T;
    r->inputs = (int *)malloc_check(2 * n * sizeof(int));
    r->targets = r->inputs + n;
    r->losses = (float *)malloc_check(2 * (size_t)r->S * sizeof(float));
    r->norms = r->losses + r->S;
    fread_check(r->inputs, sizeof(int), 2 * n, f, path);
    fread_check(r->losses, sizeof(float), 2 * (size_t)r->S, f, path);
    return f;
}

static void ref_free(RefFile *r) { free(r->inputs); free(r->losses); }

typedef struct { int tag, numel, nstored; double sum, sumsq; int *idx; float *val; } Record;

static void read_record(Record *r, FILE *f, const char *path, int want_tag, size_t want_numel) {
    int h[4];
    fread_check(h, sizeof(int), 4, f, path);
    r->tag = h[0]; r->numel = h[1]; r->nstored = h[2];
    if (r->tag != want_tag || (size_t)r->numel != want_numel || r->nstored < 1 || r->nstored > r->numel)
        die("%s: record tag %d numel %d stored %d, want tag %d numel %zu", path, r->tag, r->numel, r->nstored, want_tag, want_numel);
    fread_check(&r->sum, sizeof(double), 1, f, path);
    fread_check(&r->sumsq, sizeof(double), 1, f, path);
    r->idx = (int *)malloc_check((size_t)r->nstored * sizeof(int));
    r->val = (float *)malloc_check((size_t)r->nstored * sizeof(float));
    if (r->nstored == r->numel) for (int i = 0; i < r->numel; i++) r->idx[i] = i;
    else fread_check(r->idx, sizeof(int), (size_t)r->nstored, f, path);
    fread_check(r->val, sizeof(float), (size_t)r->nstored, f, path);
    for (int i = 0; i < r->nstored; i++) if (r->idx[i] < 0 || r->idx[i] >= r->numel) die("%s: record index out of range", path);
}

// returns the max error relative to the reference's max magnitude; *sumsq_err the whole-tensor one
static float compare(const float *x, const Record *r, float *sumsq_err) {
    float maxerr = 0.0f, maxref = 0.0f;
    for (int i = 0; i < r->nstored; i++) {
        maxerr = fmaxf(maxerr, fabsf(x[r->idx[i]] - r->val[i]));
        maxref = fmaxf(maxref, fabsf(r->val[i]));
    }
    double ss = 0.0;
    for (int i = 0; i < r->numel; i++) ss += (double)x[i] * x[i];
    *sumsq_err = r->sumsq > 0 ? (float)(fabs(ss - r->sumsq) / r->sumsq) : (float)ss;
    if (!(maxerr == maxerr)) return INFINITY;
    return maxref > 0 ? maxerr / maxref : maxerr;
}

#endif
