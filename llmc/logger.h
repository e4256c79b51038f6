// defines: Logger, logger_init, logger_train, logger_eval, logger_close
// One JSON object per line (main.jsonl in the output folder), for scripts/ to plot.
#ifndef LLMC_LOGGER_H
#define LLMC_LOGGER_H

#include <stdio.h>
#include "utils.h"

typedef struct { FILE *f; char path[1024]; } Logger;

// dir == NULL logs nothing; resume appends, else the log starts over
static void logger_init(Logger *lg, const char *dir, int resume) {
    lg->f = NULL;
    if (dir == NULL) return;
    snprintf(lg->path, sizeof(lg->path), "%s/main.jsonl", dir);
    lg->f = fopen_check(lg->path, resume ? "a" : "w");
}

// step: optimizer steps done; tokens: training tokens seen so far
static void logger_train(Logger *lg, int step, long long tokens, float loss, float norm, float lr, double ms, double tok_s) {
    if (!lg->f) return;
    fprintf(lg->f, "{\"step\": %d, \"tokens\": %lld, \"train_loss\": %.6f, \"grad_norm\": %.6f, \"lr\": %.6e, \"ms\": %.3f, \"tok_s\": %.1f}\n",
            step, tokens, loss, norm, lr, ms, tok_s);
    fflush(lg->f);
}

static void logger_eval(Logger *lg, int step, long long tokens, float val_loss) {
    if (!lg->f) return;
    fprintf(lg->f, "{\"step\": %d, \"tokens\": %lld, \"val_loss\": %.6f}\n", step, tokens, val_loss);
    fflush(lg->f);
}

static void logger_close(Logger *lg) { if (lg->f) fclose_check(lg->f, lg->path); }

#endif
