// defines: OperandFormats, recipe_table, RecipeOptions, LinearRecipe, Recipe, recipe_parse,
//          recipe_resolve, recipe_print
// Precision recipes as data (SPEC.md 4): for each block linear, the format of the activation X,
// the weight W and the output gradient G; DGE and OCC where the operands are 4-bit; and the
// attention core's format (BF16 flash attention, or E4M3 Q, K, V and P: attention_fp8.h).
#ifndef LLMC_RECIPE_H
#define LLMC_RECIPE_H

#include <stdio.h>
#include <string.h>
#include "quant.h"
#include "model.h"

typedef struct { Format x, w, g; } OperandFormats;  // activation, weight, output gradient

// E2M1 in this table stands for "the 4-bit layout in use", E4M3 in a G column for "the
// gradient format in use"
static const struct { const char *name; OperandFormats attn, mlp; } recipe_table[] = {
    { "fp32", { FMT_FP32, FMT_FP32, FMT_FP32 }, { FMT_FP32, FMT_FP32, FMT_FP32 } },
    { "bf16", { FMT_BF16, FMT_BF16, FMT_BF16 }, { FMT_BF16, FMT_BF16, FMT_BF16 } },
    { "fp8",  { FMT_E4M3, FMT_E4M3, FMT_E4M3 }, { FMT_E4M3, FMT_E4M3, FMT_E4M3 } },
    { "fp4",  { FMT_E4M3, FMT_E4M3, FMT_E4M3 }, { FMT_E2M1, FMT_E2M1, FMT_E4M3 } },
};
#define NUM_RECIPES ((int)(sizeof(recipe_table) / sizeof(recipe_table[0])))

// OCC's compensation of what the clamp cut off (RECIPE.md 5): none (clamp only); exact, R W^T and
// G^T R in BF16 beside the quantized GEMMs; or in the operand, where each clamped entry's code
// keeps its excess in E4M3 (quant.h's occ_fold) and the quantized GEMMs carry it at no cost
enum { OCC_COMP_NONE, OCC_COMP_BF16, OCC_COMP_OPERAND, NUM_OCC_COMP };
static const char *const occ_comp_names[NUM_OCC_COMP] = { "clamp", "occ", "occ-operand" };

typedef struct {            // what the user asked for
    int recipe;             // row of recipe_table
    Format fp4_layout;      // e2m1 | e1m2 | e3m0
    Format grad_format;     // e4m3 | e5m2
    int fp4_attn, dge, occ, occ_comp, tensorwise;  // occ_comp: OCC_COMP_*
    int attn_fp8;           // --attn-core fp8
    float dge_k, occ_alpha;
} RecipeOptions;

typedef struct {            // resolved per linear
    OperandFormats f;
    int dge, occ;
} LinearRecipe;

typedef struct {
    LinearRecipe lin[NUM_LINEARS];
    float dge_k, occ_alpha;
    int occ_comp, tensorwise, attn_fp8;
} Recipe;

static int recipe_parse(const char *name) {
    for (int i = 0; i < NUM_RECIPES; i++) if (strcmp(name, recipe_table[i].name) == 0) return i;
    return -1;
}

static Recipe recipe_resolve(const RecipeOptions *o) {
    Recipe r;
    r.dge_k = o->dge_k; r.occ_alpha = o->occ_alpha; r.occ_comp = o->occ_comp; r.tensorwise = o->tensorwise;
    r.attn_fp8 = o->attn_fp8;
    for (int l = 0; l < NUM_LINEARS; l++) {
        int attn = l == LIN_QKV || l == LIN_ATTPROJ;
        OperandFormats f = attn && !o->fp4_attn ? recipe_table[o->recipe].attn : recipe_table[o->recipe].mlp;
        if (f.x == FMT_E2M1) f.x = o->fp4_layout;
        if (f.w == FMT_E2M1) f.w = o->fp4_layout;
        if (f.g == FMT_E4M3) f.g = o->grad_format;
        r.lin[l].f = f;
        r.lin[l].dge = o->dge && format_is_fp4(f.w);
        r.lin[l].occ = o->occ && format_is_fp4(f.x);
    }
    return r;
}

// one line: the recipe's name and each linear's (activation, weight, gradient) formats
static void recipe_print(const char *name, const Recipe *r) {
    printf("recipe %s:", name);
    for (int l = 0; l < NUM_LINEARS; l++) {
        const LinearRecipe *lr = &r->lin[l];
        printf(" %s(%s,%s,%s%s%s%s)", linear_names[l], format_name(lr->f.x), format_name(lr->f.w), format_name(lr->f.g),
               lr->dge ? ",dge" : "", lr->occ ? "," : "", lr->occ ? occ_comp_names[r->occ_comp] : "");
    }
    printf("%s%s\n", r->tensorwise ? " tensor-wise" : "", r->attn_fp8 ? " attention-core fp8" : "");
}

#endif
