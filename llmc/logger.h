// defines: Logger, logger_init, logger_train, logger_eval, logger_quant, logger_close
// One JSON object per line (main.jsonl in the output folder), for scripts/ to plot.
#ifndef LLMC_LOGGER_H
#define LLMC_LOGGER_H

#include <stdio.h>
#include "utils.h"
#include "quant_stats.h"

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

static void json_qerr(FILE *f, const char *name, QErr e) {
    fprintf(f, "\"%s\": {\"cos\": %.8f, \"mse\": %.6e, \"snr_db\": %.3f}", name, e.cos, e.mse, e.snr_db);
}

// --quant-stats: one line per linear per layer; step: optimizer steps done before it
static void logger_quant(Logger *lg, int step, int layer, const char *linear, const char *fx, const QStats *q) {
    if (!lg->f) return;
    FILE *f = lg->f;
    fprintf(f, "{\"step\": %d, \"quant\": {\"layer\": %d, \"linear\": \"%s\", \"x_format\": \"%s\", ", step, layer, linear, fx);
    json_qerr(f, "x", q->x); fprintf(f, ", "); json_qerr(f, "w", q->w); fprintf(f, ", "); json_qerr(f, "g", q->g);
    fprintf(f, ", \"clamped\": %.6e, \"dw_raw\": %.6e, \"dw_dge\": %.6e", q->clamped, q->dw_raw, q->dw_dge);
    if (q->has_table) {
        fprintf(f, ", \"x_table\": {");
        for (int s = 0; s < QT_SETTINGS; s++) { if (s) fprintf(f, ", "); json_qerr(f, qt_names[s], q->table[s]); }
        fprintf(f, "}");
    }
    if (q->has_occ)
        fprintf(f, ", \"occ_shape\": {\"top1\": %.6f, \"cols\": %.6f, \"tile64\": %.6f}", q->occ.top1, q->occ.cols, q->occ.tile);
    fprintf(f, "}}\n");
    fflush(f);
}

static void logger_close(Logger *lg) { if (lg->f) fclose_check(lg->f, lg->path); }

#endif
