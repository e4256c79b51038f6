// defines: Tokenizer, tokenizer_init, tokenizer_decode, tokenizer_print, tokenizer_free
// The GPT-2 decode table in llm.c's format (SPEC.md 6), built by dev/data/ from the BPE ranks.
#ifndef LLMC_TOKENIZER_H
#define LLMC_TOKENIZER_H

#include <stdint.h>
#include <ctype.h>
#include "utils.h"

#define TOKENIZER_MAGIC 20240328

typedef struct {
    uint32_t vocab, eot;
    char **table;  // vocab NUL-terminated byte strings
} Tokenizer;

static void tokenizer_init(Tokenizer *t, const char *path) {
    int header[256];
    long long size;
    FILE *f = open_with_header(path, header, TOKENIZER_MAGIC, 2, "tokenizer file", &size);
    t->vocab = (uint32_t)header[2]; t->eot = (uint32_t)header[3];
    if (t->vocab == 0 || t->vocab > 65536 || t->eot >= t->vocab) die("%s: bad vocabulary size %u or end token %u", path, t->vocab, t->eot);
    t->table = (char **)calloc_check(t->vocab, sizeof(char *));
    long long used = sizeof(header);
    for (uint32_t i = 0; i < t->vocab; i++) {
        unsigned char len;
        fread_check(&len, 1, 1, f, path);
        if (len == 0) die("%s: token %u has length 0", path, i);
        t->table[i] = (char *)malloc_check(len + 1u);
        fread_check(t->table[i], 1, len, f, path);
        t->table[i][len] = '\0';
        used += 1 + len;
    }
    if (used != size) die("%s: %lld trailing bytes after %u tokens", path, size - used, t->vocab);
    fclose(f);
}

static const char *tokenizer_decode(const Tokenizer *t, uint32_t id) {
    if (id >= t->vocab) die("token id %u is outside the tokenizer's vocabulary (%u)", id, t->vocab);
    return t->table[id];
}

// prints a token, dropping lone non-printable bytes (pieces of multi-byte characters)
static void tokenizer_print(const Tokenizer *t, uint32_t id) {
    const char *s = tokenizer_decode(t, id);
    if (s[1] == '\0' && !(isprint((unsigned char)s[0]) || isspace((unsigned char)s[0]))) return;
    printf("%s", s);
}

static void tokenizer_free(Tokenizer *t) {
    for (uint32_t i = 0; i < t->vocab; i++) free(t->table[i]);
    free(t->table);
}

#endif
