// defines: TrainState, checkpoint_write_model, checkpoint_read_model, checkpoint_state_path,
//          checkpoint_write_state, checkpoint_read_state, checkpoint_latest
// Model and optimizer-state files (SPEC.md 6). Each is written to NAME.tmp and renamed, so a
// crash leaves either the old file or the complete new one, never a torn one. The optimizer
// state may come in parts, one per rank's shard, each holding a range of the parameters.
#ifndef LLMC_CHECKPOINT_H
#define LLMC_CHECKPOINT_H

#include <glob.h>
#include <stdint.h>
#include <unistd.h>
#include "utils.h"
#include "model.h"

#define MODEL_MAGIC 20261122
#define STATE_MAGIC 20261123
#define CKPT_VERSION 1
#define STATE_VERSION 2

typedef struct {
    int step;               // optimizer steps done
    int shard;              // data loader position (of rank 0's batch)
    long long pos;
    uint64_t rng_counter;   // host RNG stream position (sampling)
} TrainState;

static void put_u64(int *h, uint64_t x) { h[0] = (int)(uint32_t)x; h[1] = (int)(uint32_t)(x >> 32); }
static uint64_t get_u64(const int *h) { return (uint64_t)(uint32_t)h[0] | (uint64_t)(uint32_t)h[1] << 32; }

// writes header + payload to path via path.tmp
static void write_atomic(const char *path, const int *header, const float *const *parts, const size_t *lens, int nparts) {
    size_t len = strlen(path) + 5;
    char *tmp = (char *)malloc_check(len);
    snprintf(tmp, len, "%s.tmp", path);
    FILE *f = fopen_check(tmp, "wb");
    fwrite_check(header, sizeof(int), 256, f, tmp);
    for (int i = 0; i < nparts; i++) fwrite_check(parts[i], sizeof(float), lens[i], f, tmp);
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) die("%s: flush failed", tmp);
    fclose_check(f, tmp);
    rename_check(tmp, path);
    free(tmp);
}

static void checkpoint_write_model(const char *path, const Config *c, const float *params, int step) {
    int h[256] = {0};
    size_t n = param_count(c);
    h[0] = MODEL_MAGIC; h[1] = CKPT_VERSION; h[2] = c->arch; h[3] = c->V; h[4] = c->Vp; h[5] = c->T;
    h[6] = c->L; h[7] = c->H; h[8] = c->KV; h[9] = c->C; h[10] = c->F; h[11] = 0;
    put_u64(h + 12, n); h[14] = step;
    memcpy(h + 32, &c->rope_theta, 4); memcpy(h + 33, &c->norm_eps, 4);
    const float *parts[1] = { params }; size_t lens[1] = { n };
    write_atomic(path, h, parts, lens, 1);
}

// reads a model file; returns malloc'd params, fills c and step
static float *checkpoint_read_model(const char *path, Config *c, int *step) {
    int h[256];
    long long size;
    FILE *f = open_with_header(path, h, MODEL_MAGIC, CKPT_VERSION, "model checkpoint", &size);
    if (h[11] != 0) die("%s: parameter dtype %d unsupported (want 0, fp32)", path, h[11]);
    memset(c, 0, sizeof(*c));
    c->arch = h[2]; c->V = h[3]; c->Vp = h[4]; c->T = h[5]; c->L = h[6]; c->H = h[7]; c->KV = h[8];
    c->C = h[9]; c->F = h[10];
    memcpy(&c->rope_theta, h + 32, 4); memcpy(&c->norm_eps, h + 33, 4);
    const char *err = config_check(c);
    if (err) die("%s: bad model configuration: %s", path, err);
    size_t n = param_count(c);
    if (get_u64(h + 12) != n) die("%s: header says %llu parameters, the configuration has %zu", path, (unsigned long long)get_u64(h + 12), n);
    if (size != (long long)(sizeof(h) + n * sizeof(float))) die("%s: file has %lld bytes, want %zu", path, size, sizeof(h) + n * sizeof(float));
    float *params = (float *)malloc_check(n * sizeof(float));
    fread_check(params, sizeof(float), n, f, path);
    fclose(f);
    *step = h[14];
    return params;
}

// the state file of part `part` of `parts`: state_STEP.bin for one part (what the CPU trainer and
// a single GPU write), state_STEP_rankR.bin for each rank's shard
static void checkpoint_state_path(char *buf, size_t n, const char *dir, int step, int part, int parts) {
    if (parts == 1) snprintf(buf, n, "%s/state_%08d.bin", dir, step);
    else snprintf(buf, n, "%s/state_%08d_rank%d.bin", dir, step, part);
}

// the optimizer state of parameters [lo, hi) out of n (m and v hold just that range): part
// `part` of `parts` that tile [0, n) in order
static void checkpoint_write_state(const char *dir, int step, int part, int parts, const TrainState *s, const float *m,
                                   const float *v, size_t n, size_t lo, size_t hi) {
    char path[1100];
    checkpoint_state_path(path, sizeof(path), dir, step, part, parts);
    int h[256] = {0};
    h[0] = STATE_MAGIC; h[1] = STATE_VERSION; put_u64(h + 2, n); h[4] = s->step; h[5] = s->shard;
    put_u64(h + 6, (uint64_t)s->pos); put_u64(h + 8, s->rng_counter);
    h[10] = part; h[11] = parts; put_u64(h + 12, lo); put_u64(h + 14, hi);
    const float *data[2] = { m, v }; size_t lens[2] = { hi - lo, hi - lo };
    write_atomic(path, h, data, lens, 2);
    if (part == 0) {  // the same step in the other layout, from an earlier run in this folder, must not be read instead
        checkpoint_state_path(path, sizeof(path), dir, step, 0, parts == 1 ? 2 : 1);
        unlink(path);
    }
}

static FILE *state_open(const char *path, int h[256], size_t n, long long *size) {
    FILE *f = open_with_header(path, h, STATE_MAGIC, STATE_VERSION, "optimizer state file", size);
    if (get_u64(h + 2) != n) die("%s: state is for %llu parameters, the model has %zu", path, (unsigned long long)get_u64(h + 2), n);
    return f;
}

// m and v of parameters [lo, hi) out of n, from the state files of `step` in dir, whichever of
// their parts hold that range: the run that wrote them may have had another number of ranks
static void checkpoint_read_state(const char *dir, int step, TrainState *s, float *m, float *v, size_t n, size_t lo, size_t hi) {
    char path[1100];
    int h[256];
    long long size;
    checkpoint_state_path(path, sizeof(path), dir, step, 0, 1);
    int parts = 1;
    if (access(path, F_OK) != 0) {  // sharded: part 0 says how many parts there are
        checkpoint_state_path(path, sizeof(path), dir, step, 0, 2);
        fclose(state_open(path, h, n, &size));
        parts = h[11];
        if (parts < 2 || parts > 1 << 16) die("%s: bad part count %d", path, parts);
    }
    size_t covered = 0;
    for (int p = 0; p < parts; p++) {
        checkpoint_state_path(path, sizeof(path), dir, step, p, parts);
        FILE *f = state_open(path, h, n, &size);
        size_t plo = get_u64(h + 12), phi = get_u64(h + 14);
        if (h[10] != p || h[11] != parts) die("%s: says part %d of %d, expected part %d of %d", path, h[10], h[11], p, parts);
        if (h[4] != step) die("%s: state of step %d, expected %d", path, h[4], step);
        if (plo != covered || phi < plo || phi > n) die("%s: range [%zu, %zu) does not follow the previous part's end %zu", path, plo, phi, covered);
        if (size != (long long)(sizeof(h) + 2 * (phi - plo) * sizeof(float))) die("%s: file has %lld bytes, want %zu", path, size, sizeof(h) + 2 * (phi - plo) * sizeof(float));
        covered = phi;
        if (p == 0) { s->step = h[4]; s->shard = h[5]; s->pos = (long long)get_u64(h + 6); s->rng_counter = get_u64(h + 8); }
        size_t a = lo > plo ? lo : plo, b = hi < phi ? hi : phi;
        for (int k = 0; a < b && k < 2; k++) {  // m, then v
            if (fseek(f, (long)(sizeof(h) + ((size_t)k * (phi - plo) + a - plo) * sizeof(float)), SEEK_SET) != 0) die("%s: seek failed", path);
            fread_check((k ? v : m) + (a - lo), sizeof(float), b - a, f, path);
        }
        fclose(f);
    }
    if (covered != n) die("%s: the %d state parts end at parameter %zu of %zu", dir, parts, covered, n);
}

// the highest step in dir that has both model_STEP.bin and a state file (written before the
// model, so a model file means a complete checkpoint), or -1
static int checkpoint_latest(const char *dir) {
    char pattern[1100], one[1100], sharded[1100];
    snprintf(pattern, sizeof(pattern), "%s/model_*.bin", dir);
    glob_t g;
    int best = -1;
    if (glob(pattern, 0, NULL, &g) == 0) {
        for (size_t i = 0; i < g.gl_pathc; i++) {
            const char *name = strrchr(g.gl_pathv[i], '/');
            int step;
            char tail;
            if (sscanf(name ? name + 1 : g.gl_pathv[i], "model_%d.bi%c", &step, &tail) != 2 || tail != 'n') continue;
            checkpoint_state_path(one, sizeof(one), dir, step, 0, 1);
            checkpoint_state_path(sharded, sizeof(sharded), dir, step, 0, 2);
            if (step > best && (access(one, R_OK) == 0 || access(sharded, R_OK) == 0)) best = step;
        }
        globfree(&g);
    }
    return best;
}

#endif
