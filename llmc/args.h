// defines: FlagType, Flag, MAX_FLAGS, Args, args_defaults, args_flags, parse_flags, check_args,
//          recipe_options
// The command line both trainers share, as data: one table of flags (name, type, destination,
// help) drives parsing, checking and `-h`. A trainer appends its own flags to the table.
#ifndef LLMC_ARGS_H
#define LLMC_ARGS_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "utils.h"
#include "recipe.h"

typedef enum { FLAG_INT, FLAG_FLOAT, FLAG_STR } FlagType;
typedef struct { const char *name; FlagType type; void *dst; const char *help; } Flag;
#define MAX_FLAGS 64

typedef struct {
    const char *train_data, *val_data, *model, *out_dir, *tokenizer, *recipe, *fp4_layout, *grad_format, *scaling, *attn_core;
    int B, T, total_batch, max_steps, warmup, val_every, val_steps, sample_every, gen_tokens, ckpt_every, resume;
    int seed, fp4_attn, dge, occ, occ_comp, quant_stats;
    float lr, final_frac, wd, clip, b1, b2, dge_k, occ_alpha;
} Args;

static Args args_defaults(const char *model, const char *recipe) {
    Args a = {
        .train_data = "data/tinyshakespeare/tiny_shakespeare_train.bin",
        .val_data = "data/tinyshakespeare/tiny_shakespeare_val.bin",
        .model = model, .out_dir = NULL, .tokenizer = "data/gpt2_tokenizer.bin",
        .recipe = recipe, .fp4_layout = "e2m1", .grad_format = "e4m3", .scaling = "vector", .attn_core = "bf16",
        .B = 4, .T = 64, .total_batch = 0, .max_steps = 100, .warmup = 10, .val_every = 20, .val_steps = 10,
        .sample_every = 0, .gen_tokens = 64, .ckpt_every = 0, .resume = 0, .seed = 1337,
        .fp4_attn = 0, .dge = 1, .occ = 1, .occ_comp = 1, .quant_stats = 0,
        .lr = 1e-3f, .final_frac = 0.1f, .wd = 0.1f, .clip = 1.0f, .b1 = 0.9f, .b2 = 0.95f,
        .dge_k = 5.0f, .occ_alpha = 0.99f,
    };
    return a;
}

// fills flags with the shared flags of a; returns how many (room is left for MAX_FLAGS)
static int args_flags(Args *a, Flag *flags) {
    const Flag shared[] = {
        { "-i", FLAG_STR, &a->train_data, "train token shards (path or glob)" },
        { "-j", FLAG_STR, &a->val_data, "val token shards (path or glob)" },
        { "-e", FLAG_STR, &a->model, "model: descriptor (gpt2:d12, llama:d16, gpt2:L=4,C=128,H=4,T=256) or model_*.bin" },
        { "-o", FLAG_STR, &a->out_dir, "output folder for the log and checkpoints" },
        { "-y", FLAG_INT, &a->resume, "1: resume from the latest checkpoint in -o" },
        { "-z", FLAG_STR, &a->tokenizer, "tokenizer decode table (for samples)" },
        { "-b", FLAG_INT, &a->B, "micro-batch size" },
        { "-t", FLAG_INT, &a->T, "sequence length" },
        { "-d", FLAG_INT, &a->total_batch, "tokens per optimizer step (0: one micro-batch); gradient accumulation" },
        { "-x", FLAG_INT, &a->max_steps, "optimizer steps" },
        { "-l", FLAG_FLOAT, &a->lr, "peak learning rate" },
        { "-u", FLAG_INT, &a->warmup, "warmup steps" },
        { "-q", FLAG_FLOAT, &a->final_frac, "final learning rate as a fraction of the peak (cosine)" },
        { "-c", FLAG_FLOAT, &a->wd, "weight decay" },
        { "-p", FLAG_FLOAT, &a->clip, "gradient clipping norm (0: off)" },
        { "--beta1", FLAG_FLOAT, &a->b1, "Adam beta1" },
        { "--beta2", FLAG_FLOAT, &a->b2, "Adam beta2" },
        { "-v", FLAG_INT, &a->val_every, "evaluate every N steps (0: only at the end)" },
        { "-m", FLAG_INT, &a->val_steps, "val batches per evaluation" },
        { "-s", FLAG_INT, &a->sample_every, "sample every N steps (0: never)" },
        { "-g", FLAG_INT, &a->gen_tokens, "tokens per sample" },
        { "-n", FLAG_INT, &a->ckpt_every, "checkpoint every N steps (0: only at the end, if -o)" },
        { "--seed", FLAG_INT, &a->seed, "seed of the initialization and sampling" },
        { "-r", FLAG_STR, &a->recipe, "precision recipe: fp32 | bf16 | fp8 | fp4" },
        { "--fp4-format", FLAG_STR, &a->fp4_layout, "4-bit layout: e2m1 | e1m2 | e3m0" },
        { "--fp4-attn", FLAG_INT, &a->fp4_attn, "1: attention projections in fp4 too" },
        { "--dge", FLAG_INT, &a->dge, "differentiable gradient estimator on fp4 weights (0/1)" },
        { "--dge-k", FLAG_FLOAT, &a->dge_k, "DGE sharpness k" },
        { "--occ", FLAG_INT, &a->occ, "outlier clamping and compensation on fp4 activations (0/1)" },
        { "--occ-alpha", FLAG_FLOAT, &a->occ_alpha, "OCC quantile" },
        { "--occ-comp", FLAG_INT, &a->occ_comp, "OCC's compensation: 1 exact (BF16 GEMMs), 2 in the operand (E4M3 codes), 0 none" },
        { "--grad-format", FLAG_STR, &a->grad_format, "8-bit output-gradient format: e4m3 | e5m2" },
        { "--scaling", FLAG_STR, &a->scaling, "scaling granularity: vector | tensor" },
        { "--attn-core", FLAG_STR, &a->attn_core, "attention core: bf16 (fp32 on the CPU) | fp8 (E4M3 Q, K, V, P)" },
        { "--quant-stats", FLAG_INT, &a->quant_stats, "every N steps log each linear's quantization error (0: never)" },
    };
    int n = (int)(sizeof(shared) / sizeof(shared[0]));
    memcpy(flags, shared, sizeof(shared));
    return n;
}

static void usage(const Flag *flags, int n, const char *prog, const char *what) {
    printf("usage: %s [flags]   %s\n", prog, what);
    for (int i = 0; i < n; i++) {
        char def[64];
        if (flags[i].type == FLAG_INT) snprintf(def, sizeof(def), "%d", *(int *)flags[i].dst);
        else if (flags[i].type == FLAG_FLOAT) snprintf(def, sizeof(def), "%g", *(float *)flags[i].dst);
        else snprintf(def, sizeof(def), "%s", *(const char **)flags[i].dst ? *(const char **)flags[i].dst : "none");
        printf("  %-16s %s (default %s)\n", flags[i].name, flags[i].help, def);
    }
}

static void parse_flags(int argc, char **argv, const Flag *flags, int n, const char *prog, const char *what) {
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) { usage(flags, n, prog, what); exit(EXIT_SUCCESS); }
        const Flag *f = NULL;
        for (int j = 0; j < n; j++) if (strcmp(argv[i], flags[j].name) == 0) f = &flags[j];
        if (f == NULL) die("unknown flag '%s' (see -h)", argv[i]);
        if (i + 1 >= argc) die("flag %s needs a value", argv[i]);
        const char *v = argv[++i];
        char *end;
        if (f->type == FLAG_INT) {
            long x = strtol(v, &end, 10);
            if (*v == '\0' || *end != '\0' || x < -2147483647L || x > 2147483647L) die("flag %s: '%s' is not an integer", f->name, v);
            *(int *)f->dst = (int)x;
        } else if (f->type == FLAG_FLOAT) {
            float x = strtof(v, &end);
            if (*v == '\0' || *end != '\0' || !isfinite(x)) die("flag %s: '%s' is not a number", f->name, v);
            *(float *)f->dst = x;
        } else {
            *(const char **)f->dst = v;
        }
    }
}

static void check_args(const Args *a) {
    if (a->B < 1 || a->T < 1) die("batch size -b and sequence length -t must be positive");
    if (a->total_batch < 0 || (a->total_batch > 0 && a->total_batch % (a->B * a->T) != 0))
        die("total batch -d (%d tokens) must be a multiple of -b * -t (%d)", a->total_batch, a->B * a->T);
    if ((long long)a->B * a->T > (1 << 24)) die("-b * -t = %lld tokens per micro-batch is more than 2^24", (long long)a->B * a->T);
    if (a->max_steps < 0 || a->warmup < 0 || a->gen_tokens < 0 || a->val_every < 0 || a->sample_every < 0 || a->ckpt_every < 0 ||
        a->quant_stats < 0)
        die("step counts and intervals must be >= 0");
    if (a->val_steps < 1) die("-m (val batches per evaluation) must be >= 1");
    if ((a->resume | a->fp4_attn | a->dge | a->occ) & ~1) die("-y, --fp4-attn, --dge and --occ take 0 or 1");
    if (a->occ_comp < 0 || a->occ_comp >= NUM_OCC_COMP) die("--occ-comp takes 0 (none), 1 (bf16) or 2 (in the operand)");
    if (!(a->lr >= 0) || !(a->final_frac >= 0 && a->final_frac <= 1)) die("learning rate must be >= 0 and -q in [0, 1]");
    if (!(a->wd >= 0) || !(a->clip >= 0)) die("weight decay and clip must be >= 0");
    if (!(a->b1 >= 0 && a->b1 < 1) || !(a->b2 >= 0 && a->b2 < 1)) die("Adam betas must be in [0, 1)");
    if (!(a->dge_k >= 1)) die("--dge-k must be >= 1");
    if (!(a->occ_alpha > 0.5f && a->occ_alpha <= 1.0f)) die("--occ-alpha must be in (0.5, 1]");
    if (a->resume && a->out_dir == NULL) die("-y 1 (resume) needs an output folder -o");
}

static RecipeOptions recipe_options(const Args *a) {
    RecipeOptions o;
    o.recipe = recipe_parse(a->recipe);
    if (o.recipe < 0) die("unknown recipe '%s' (fp32, bf16, fp8, fp4)", a->recipe);
    int f = format_parse(a->fp4_layout);
    if (f < 0 || !format_is_fp4((Format)f)) die("unknown 4-bit layout '%s' (e2m1, e1m2, e3m0)", a->fp4_layout);
    o.fp4_layout = (Format)f;
    f = format_parse(a->grad_format);
    if (f != FMT_E4M3 && f != FMT_E5M2) die("unknown gradient format '%s' (e4m3, e5m2)", a->grad_format);
    o.grad_format = (Format)f;
    if (strcmp(a->scaling, "vector") != 0 && strcmp(a->scaling, "tensor") != 0) die("unknown scaling '%s' (vector, tensor)", a->scaling);
    o.tensorwise = strcmp(a->scaling, "tensor") == 0;
    if (strcmp(a->attn_core, "bf16") != 0 && strcmp(a->attn_core, "fp8") != 0) die("unknown attention core '%s' (bf16, fp8)", a->attn_core);
    o.attn_fp8 = strcmp(a->attn_core, "fp8") == 0;
    o.fp4_attn = a->fp4_attn; o.dge = a->dge; o.occ = a->occ; o.occ_comp = a->occ_comp; o.dge_k = a->dge_k;
    o.occ_alpha = a->occ_alpha;
    return o;
}

#endif
