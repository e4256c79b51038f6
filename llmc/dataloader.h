// defines: DataLoader, dataloader_init, dataloader_next, dataloader_reset, dataloader_free,
//          shard_open
// Reads llm.c token shards (SPEC.md 6). Batches are read in order through the shards matched by
// a glob pattern, a step's worth at a time: the step's group of ranks x micro-steps batches,
// rank r's micro-step i reading batch r * micro + i of it. A group never straddles two shards, so
// any split of the same global batch over ranks and micro-steps reads the same tokens. The
// position (shard, offset of the step's group) is all the state there is, which makes a resumed
// run read the same tokens, on any number of ranks.
#ifndef LLMC_DATALOADER_H
#define LLMC_DATALOADER_H

#include <glob.h>
#include <stdint.h>
#include "utils.h"

#define SHARD_MAGIC 20240520
#define SHARD_VERSION 1
#define SHARD_HEADER_INTS 256

typedef struct {
    int B, T, vocab;
    int group, first, micro;  // batches per step (ranks x micro-steps); this rank's first of them; its micro-steps
    int next;            // micro-steps of this step already read
    glob_t files;
    int shard;           // index into files of the open shard
    long long pos;       // token offset of the step's group of batches in the shard
    long long ntok;      // tokens in the open shard
    FILE *f;
    uint16_t *buf;       // B*T+1 tokens
    int *inputs, *targets;  // (B, T)
} DataLoader;

// opens and validates a shard; returns the token count
static long long shard_open(FILE **fp, const char *path) {
    int header[SHARD_HEADER_INTS];
    long long size;
    FILE *f = open_with_header(path, header, SHARD_MAGIC, SHARD_VERSION, "token shard", &size);
    long long ntok = header[2];
    if (ntok < 0 || size != (long long)sizeof(header) + 2 * ntok)
        die("%s: shard header says %lld tokens but the file has %lld bytes (want %lld)", path, ntok, size, (long long)sizeof(header) + 2 * ntok);
    *fp = f;
    return ntok;
}

static void dataloader_open_shard(DataLoader *d, int shard) {
    if (d->f) fclose(d->f);
    d->shard = shard;
    const char *path = d->files.gl_pathv[shard];
    d->ntok = shard_open(&d->f, path);
    if (d->ntok < (long long)d->B * d->T * d->group + 1)
        die("%s: %lld tokens is too few for one step of %d batches of %d x %d", path, d->ntok, d->group, d->B, d->T);
}

static void dataloader_reset(DataLoader *d) {
    dataloader_open_shard(d, 0);
    d->pos = 0;
    d->next = 0;
}

// pattern: a path or glob; this process is rank `rank` of `ranks`, taking `micro` batches a step;
// vocab: token ids must be < vocab
static void dataloader_init(DataLoader *d, const char *pattern, int B, int T, int rank, int ranks, int micro, int vocab) {
    memset(d, 0, sizeof(*d));
    d->B = B; d->T = T; d->vocab = vocab;
    d->group = ranks * micro; d->first = rank * micro; d->micro = micro;
    int rc = glob(pattern, 0, NULL, &d->files);
    if (rc != 0 || d->files.gl_pathc == 0) die("no token shards match '%s'", pattern);
    d->buf = (uint16_t *)malloc_check(((size_t)B * T + 1) * sizeof(uint16_t));
    d->inputs = (int *)malloc_check((size_t)B * T * sizeof(int));
    d->targets = (int *)malloc_check((size_t)B * T * sizeof(int));
    dataloader_reset(d);
}

// restores a saved position (from a checkpoint, taken between steps)
static void dataloader_seek(DataLoader *d, int shard, long long pos) {
    if (shard < 0 || shard >= (int)d->files.gl_pathc) die("checkpoint data position names shard %d, but only %zu shards match", shard, d->files.gl_pathc);
    dataloader_open_shard(d, shard);
    // a group that no longer fits (the saving run may have had fewer ranks) moves to the next shard in dataloader_next
    if (pos < 0 || pos > d->ntok) die("checkpoint data position %lld is outside shard %s", pos, d->files.gl_pathv[shard]);
    d->pos = pos;
    d->next = 0;
}

// fills inputs/targets with this rank's next batch and advances
static void dataloader_next(DataLoader *d) {
    size_t n = (size_t)d->B * d->T;
    if (d->next == 0 && d->pos + (long long)n * d->group + 1 > d->ntok) {  // the step does not fit: next shard (wrapping)
        dataloader_open_shard(d, (d->shard + 1) % (int)d->files.gl_pathc);
        d->pos = 0;
    }
    const char *path = d->files.gl_pathv[d->shard];
    long long at = d->pos + (long long)n * (d->first + d->next);
    if (fseek(d->f, (long)(SHARD_HEADER_INTS * sizeof(int) + 2 * at), SEEK_SET) != 0) die("%s: seek failed", path);
    fread_check(d->buf, sizeof(uint16_t), n + 1, d->f, path);
    for (size_t i = 0; i < n; i++) {
        if (d->buf[i] >= d->vocab || d->buf[i + 1] >= d->vocab)
            die("%s: token id %d at position %lld is outside the vocabulary (%d)", path,
                d->buf[i] >= d->vocab ? d->buf[i] : d->buf[i + 1], at + (long long)i, d->vocab);
        d->inputs[i] = d->buf[i];
        d->targets[i] = d->buf[i + 1];
    }
    if (++d->next == d->micro) { d->pos += (long long)n * d->group; d->next = 0; }
}

static void dataloader_free(DataLoader *d) {
    if (d->f) fclose(d->f);
    globfree(&d->files);
    free(d->buf); free(d->inputs); free(d->targets);
}

#endif
