// defines: TrainState, checkpoint_write_model, checkpoint_read_model, checkpoint_write_state,
//          checkpoint_read_state, checkpoint_latest
// Model and optimizer-state files (SPEC.md 6). Each is written to NAME.tmp and renamed, so a
// crash leaves either the old file or the complete new one, never a torn one.
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

typedef struct {
    int step;               // optimizer steps done
    int shard;              // data loader position
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

static void checkpoint_write_state(const char *path, const TrainState *s, const float *m, const float *v, size_t n) {
    int h[256] = {0};
    h[0] = STATE_MAGIC; h[1] = CKPT_VERSION; put_u64(h + 2, n); h[4] = s->step; h[5] = s->shard;
    put_u64(h + 6, (uint64_t)s->pos); put_u64(h + 8, s->rng_counter);
    const float *parts[2] = { m, v }; size_t lens[2] = { n, n };
    write_atomic(path, h, parts, lens, 2);
}

static void checkpoint_read_state(const char *path, TrainState *s, float *m, float *v, size_t n) {
    int h[256];
    long long size;
    FILE *f = open_with_header(path, h, STATE_MAGIC, CKPT_VERSION, "optimizer state file", &size);
    if (get_u64(h + 2) != n) die("%s: state is for %llu parameters, the model has %zu", path, (unsigned long long)get_u64(h + 2), n);
    if (size != (long long)(sizeof(h) + 2 * n * sizeof(float))) die("%s: file has %lld bytes, want %zu", path, size, sizeof(h) + 2 * n * sizeof(float));
    s->step = h[4]; s->shard = h[5]; s->pos = (long long)get_u64(h + 6); s->rng_counter = get_u64(h + 8);
    fread_check(m, sizeof(float), n, f, path);
    fread_check(v, sizeof(float), n, f, path);
    fclose(f);
}

// the highest step in dir that has both model_STEP.bin and state_STEP.bin, or -1
static int checkpoint_latest(const char *dir) {
    char pattern[1100], path[1100];
    snprintf(pattern, sizeof(pattern), "%s/model_*.bin", dir);
    glob_t g;
    int best = -1;
    if (glob(pattern, 0, NULL, &g) == 0) {
        for (size_t i = 0; i < g.gl_pathc; i++) {
            const char *name = strrchr(g.gl_pathv[i], '/');
            int step;
            char tail;
            if (sscanf(name ? name + 1 : g.gl_pathv[i], "model_%d.bi%c", &step, &tail) != 2 || tail != 'n') continue;
            snprintf(path, sizeof(path), "%s/state_%08d.bin", dir, step);
            if (step > best && access(path, R_OK) == 0) best = step;
        }
        globfree(&g);
    }
    return best;
}

#endif
