// defines: Run, run_resume_step, run_model_path, run_open, run_close, run_eval_due, run_sample_due,
//          run_ckpt_due, run_report_eval, run_model_file
// What a training run holds besides the model, the same for both trainers: where the model
// comes from (descriptor, checkpoint, or the latest checkpoint of -o when resuming), the data
// loaders, the tokenizer for samples, the sampling RNG and the log (rank 0's only).
#ifndef LLMC_RUN_H
#define LLMC_RUN_H

#include <stdio.h>
#include <string.h>
#include "utils.h"
#include "model.h"
#include "args.h"
#include "checkpoint.h"
#include "dataloader.h"
#include "tokenizer.h"
#include "logger.h"
#include "rand.h"

typedef struct {
    DataLoader train, val;
    Tokenizer tok;
    int have_tok;   // 0: samples print token ids
    Rng rng;        // sampling
    Logger lg;
} Run;

// the step to resume from with -y 1 (dies if there is none), or -1
static int run_resume_step(const Args *a) {
    if (!a->resume) return -1;
    int step = checkpoint_latest(a->out_dir);
    if (step < 0) die("-y 1: no complete checkpoint (model_N.bin + state_N.bin) in %s", a->out_dir);
    return step;
}

// the model file of the checkpoint at step (a buffer of n bytes)
static void run_model_file(const Args *a, int step, char *model, size_t n) {
    snprintf(model, n, "%s/model_%08d.bin", a->out_dir, step);
}

// the checkpoint to load the model from (written into buf), or NULL for a descriptor
static const char *run_model_path(const Args *a, int resume_step, char *buf, size_t n) {
    if (resume_step >= 0) { run_model_file(a, resume_step, buf, n); return buf; }
    return strchr(a->model, ':') == NULL ? a->model : NULL;
}

// st: the restored state when resuming (data position, RNG), else zeros; this process is rank
// `rank` of `world`, reading `accum` micro-batches a step (one per evaluation step)
static void run_open(Run *r, const Args *a, const Config *cfg, const TrainState *st, int resumed, int rank, int world, int accum) {
    dataloader_init(&r->train, a->train_data, a->B, a->T, rank, world, accum, cfg->V);
    dataloader_init(&r->val, a->val_data, a->B, a->T, rank, world, 1, cfg->V);
    if (resumed) dataloader_seek(&r->train, st->shard, st->pos);
    memset(&r->tok, 0, sizeof(r->tok));
    FILE *tf = fopen(a->tokenizer, "rb");
    r->have_tok = tf != NULL;
    if (tf) {
        fclose(tf);
        tokenizer_init(&r->tok, a->tokenizer);
        if (r->tok.vocab < (uint32_t)cfg->V) die("%s has %u tokens, fewer than the model's vocabulary %d", a->tokenizer, r->tok.vocab, cfg->V);
    } else {
        printf("no tokenizer at %s: samples print token ids\n", a->tokenizer);
    }
    r->rng = rng_init((uint64_t)a->seed);
    r->rng.counter = st->rng_counter;
    logger_init(&r->lg, rank == 0 ? a->out_dir : NULL, resumed);
}

// what happens at the top of step `step` (0 .. max_steps; the last one only evaluates, samples
// and checkpoints). first: the step the run started or resumed at, which is never re-saved.
static int run_eval_due(const Args *a, int step) { return step == a->max_steps || (a->val_every > 0 && step % a->val_every == 0); }
static int run_sample_due(const Args *a, int step) {
    return a->sample_every > 0 && (step % a->sample_every == 0 || step == a->max_steps);
}
static int run_ckpt_due(const Args *a, int step, int first) {
    return a->out_dir && step > first && (step == a->max_steps || (a->ckpt_every > 0 && step % a->ckpt_every == 0));
}

static void run_report_eval(Run *r, int step, long long tokens, float val_loss) {
    printf("step %5d | val loss %.6f\n", step, val_loss);
    logger_eval(&r->lg, step, tokens, val_loss);
}


static void run_close(Run *r) {
    logger_close(&r->lg);
    dataloader_free(&r->train); dataloader_free(&r->val);
    if (r->have_tok) tokenizer_free(&r->tok);
}

#endif
