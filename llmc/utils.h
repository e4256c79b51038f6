// defines: error_context, die, fopen_check, fread_check, fwrite_check, fclose_check, malloc_check,
//          file_size, rename_check, open_with_header, now_seconds
// Every failure ends the program with one line "error: ..." on stderr and exit code 1, so bad
// input never turns into a crash or a silent wrong result.
#ifndef LLMC_UTILS_H
#define LLMC_UTILS_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <time.h>

// who is speaking, when several processes share a terminal ("rank 3: "); empty otherwise
static char error_context[32];

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "error: %s", error_context);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(EXIT_FAILURE);
}

static FILE *fopen_check(const char *path, const char *mode) {
    FILE *f = fopen(path, mode);
    if (f == NULL) { die("cannot open %s: %s", path, strerror(errno)); }
    return f;
}

// reads exactly count items or dies naming the file and what was short
static void fread_check(void *dst, size_t size, size_t count, FILE *f, const char *path) {
    size_t got = fread(dst, size, count, f);
    if (got != count) { die("%s: truncated file (wanted %zu items of %zu bytes, got %zu)", path, count, size, got); }
}

static void fwrite_check(const void *src, size_t size, size_t count, FILE *f, const char *path) {
    if (fwrite(src, size, count, f) != count) { die("%s: write failed: %s", path, strerror(errno)); }
}

static void fclose_check(FILE *f, const char *path) {
    if (fclose(f) != 0) { die("%s: close failed: %s", path, strerror(errno)); }
}

static void *malloc_check(size_t size) {
    void *p = malloc(size > 0 ? size : 1);
    if (p == NULL) { die("out of memory allocating %zu bytes", size); }
    return p;
}

static void *calloc_check(size_t count, size_t size) {
    void *p = calloc(count > 0 ? count : 1, size > 0 ? size : 1);
    if (p == NULL) { die("out of memory allocating %zu x %zu bytes", count, size); }
    return p;
}

static long long file_size(FILE *f, const char *path) {
    long pos = ftell(f);
    if (fseek(f, 0, SEEK_END) != 0) { die("%s: cannot seek", path); }
    long long n = ftell(f);
    if (fseek(f, pos, SEEK_SET) != 0) { die("%s: cannot seek", path); }
    return n;
}

// opens a file that starts with a header of 256 32-bit words, reads the header and checks its
// magic and version; `what` names the kind of file in the messages. Returns the file, *size set.
static FILE *open_with_header(const char *path, int header[256], int magic, int version, const char *what, long long *size) {
    FILE *f = fopen_check(path, "rb");
    *size = file_size(f, path);
    if (*size < 256 * 4) die("%s: truncated %s (%lld bytes)", path, what, *size);
    fread_check(header, sizeof(int), 256, f, path);
    if (header[0] != magic) die("%s: not a %s (magic %d, want %d)", path, what, header[0], magic);
    if (header[1] != version) die("%s: %s version %d unsupported (want %d)", path, what, header[1], version);
    return f;
}

static void rename_check(const char *from, const char *to) {
    if (rename(from, to) != 0) { die("cannot rename %s to %s: %s", from, to, strerror(errno)); }
}

// a monotonic clock, in seconds (timings and deadlines)
static double now_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#endif
