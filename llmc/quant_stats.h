// defines: QErr, qerr_from_sums, quant_error, QT_SETTINGS, qt_names, quant_table_x, OccShape, occ_shape,
//          QStats
// Quantization telemetry (--quant-stats): how far a quantized operand is from the tensor it
// stands for (cosine similarity, mean squared error, signal-to-noise ratio), and the activation
// table of Wang et al.'s Table 1: the same activation quantized with no clamp, clamped at the
// 0.999 quantile, and clamped with the residual compensated at 0.999 / 0.99 / 0.97; and ours,
// clamped at 0.99 with the residual folded into the codes (--occ-comp 2).
#ifndef LLMC_QUANT_STATS_H
#define LLMC_QUANT_STATS_H

#include <math.h>
#include "quant.h"
#include "utils.h"

typedef struct { double cos, mse, snr_db; } QErr;

// from the sums over n entries of x x, q q, x q and (x - q)^2: an exact q has an SNR of +inf,
// logged as 999 dB
static QErr qerr_from_sums(const double *s, double n) {
    double rr = s[0], qq = s[1], rq = s[2], ee = s[3];
    QErr e;
    e.cos = rr > 0.0 && qq > 0.0 ? rq / sqrt(rr * qq) : (rr == qq ? 1.0 : 0.0);
    e.mse = ee / n;
    e.snr_db = ee > 0.0 ? 10.0 * log10(rr / ee) : 999.0;
    if (e.snr_db > 999.0) e.snr_db = 999.0;
    return e;
}

// q = codes * scales (one scale per row with axis 0, per column with axis 1) + add (if not NULL),
// against ref; all (rows, cols)
static QErr quant_error(const float *ref, const float *codes, const float *scales, const float *add, int rows, int cols, int axis) {
    double rr = 0.0, qq = 0.0, rq = 0.0, ee = 0.0;
    #pragma omp parallel for reduction(+:rr, qq, rq, ee)
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < cols; c++) {
            size_t i = (size_t)r * cols + c;
            double x = ref[i], q = (double)codes[i] * scales[axis == 0 ? r : c] + (add ? add[i] : 0.0);
            rr += x * x; qq += q * q; rq += x * q; ee += (x - q) * (x - q);
        }
    }
    double sums[4] = { rr, qq, rq, ee };
    return qerr_from_sums(sums, (double)rows * cols);
}

#define QT_SETTINGS 6
static const char *const qt_names[QT_SETTINGS] = { "no clamp", "clamp 0.999", "clamp+comp 0.999", "clamp+comp 0.99", "clamp+comp 0.97",
                                                   "clamp+operand 0.99" };
static const float qt_alpha[QT_SETTINGS] = { 0.0f, 0.999f, 0.999f, 0.99f, 0.97f, 0.99f };
static const int qt_comp[QT_SETTINGS] = { 0, 0, 1, 1, 1, 2 };  // the residual: 1 added exactly, 2 folded into the codes

// x (rows, cols) quantized per row to f under each setting of Table 1, against x itself
static void quant_table_x(QErr out[QT_SETTINGS], const float *x, int rows, int cols, Format f) {
    size_t n = (size_t)rows * cols;
    float *xc = (float *)malloc_check(n * sizeof(float)), *resid = (float *)malloc_check(n * sizeof(float));
    float *codes = (float *)malloc_check(n * sizeof(float)), *scales = (float *)malloc_check((size_t)rows * sizeof(float));
    for (int s = 0; s < QT_SETTINGS; s++) {
        if (s == 0 || qt_alpha[s] != qt_alpha[s - 1]) {  // clamp and comp at one alpha share the codes
            if (qt_alpha[s] > 0.0f) occ_clamp_rows(xc, resid, x, rows, cols, qt_alpha[s]);
            quantize_matrix(codes, scales, qt_alpha[s] > 0.0f ? xc : x, rows, cols, f, 0, 0);
        }
        if (qt_comp[s] == 2) occ_fold_codes(codes, scales, x, xc, rows, cols);  // the codes change: no setting after it shares them
        out[s] = quant_error(x, codes, scales, qt_comp[s] == 1 ? resid : NULL, rows, cols, 0);
    }
    free(xc); free(resid); free(codes); free(scales);
}

// Where OCC's outliers sit (the residual's nonzero entries), which decides how the compensation
// should run on the GPU: top1, the share of them in the busiest 1% of the columns; cols, the
// fraction of columns holding any; tile, per block of OCC_SHAPE_ROWS rows, the distinct columns over the
// entries, summed over the blocks (1: no two entries of a block share a column; near 0: a few
// columns hold them all, and a backward that reads G's rows once per block and column reads each
// about tile times less). All zero when there is no outlier.
#define OCC_SHAPE_ROWS 64  // logged as "tile64"
typedef struct { double top1, cols, tile; } OccShape;

static int cmp_long_desc(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x < y) - (x > y);
}

static OccShape occ_shape(const float *resid, int rows, int cols) {
    OccShape o = { 0.0, 0.0, 0.0 };
    long *count = (long *)calloc_check((size_t)cols, sizeof(long)), nnz = 0, distinct = 0, any = 0, top = 0;
    int *seen = (int *)malloc_check((size_t)cols * sizeof(int));
    for (int c = 0; c < cols; c++) seen[c] = -1;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            if (resid[(size_t)r * cols + c] == 0.0f) continue;
            nnz++; count[c]++;
            if (seen[c] != r / OCC_SHAPE_ROWS) { seen[c] = r / OCC_SHAPE_ROWS; distinct++; }
        }
    qsort(count, (size_t)cols, sizeof(long), cmp_long_desc);
    for (int c = 0; c < cols; c++) { any += count[c] > 0; if (c < (cols + 99) / 100) top += count[c]; }
    if (nnz > 0) { o.top1 = (double)top / nnz; o.cols = (double)any / cols; o.tile = (double)distinct / nnz; }
    free(count); free(seen);
    return o;
}

// what --quant-stats records of one linear of one layer in one step
typedef struct {
    QErr x, w, g;             // the run's operands against their unquantized tensors (x: with the
                              // compensation added back under OCC; g: the dgrad operand)
    double clamped;           // fraction of x's entries OCC clamped
    double dw_raw, dw_dge;    // the weight gradient's norm before and after DGE
    int has_table;            // the table below is filled (the CPU trainer's)
    QErr table[QT_SETTINGS];  // x under each setting of Table 1, in x's format
    int has_occ;              // occ is filled (the CPU trainer's, for inputs under OCC)
    OccShape occ;             // where x's outliers sit
} QStats;

#endif
