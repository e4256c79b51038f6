// defines: lr_schedule
// Linear warmup, then cosine decay to final_frac * lr at the last step (RECIPE.md 6).
#ifndef LLMC_SCHEDULERS_H
#define LLMC_SCHEDULERS_H

#include <math.h>

static float lr_schedule(float lr, int step, int warmup, int total, float final_frac) {
    if (step < warmup) return lr * (float)(step + 1) / (float)warmup;
    if (total <= warmup) return lr;
    double progress = (double)(step - warmup) / (double)(total - warmup);
    if (progress > 1.0) progress = 1.0;
    double coeff = 0.5 * (1.0 + cos(M_PI * progress));  // 1 -> 0
    return (float)(lr * (final_frac + (1.0 - final_frac) * coeff));
}

#endif
