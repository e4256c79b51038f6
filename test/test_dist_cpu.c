// What of a multi-GPU run needs no GPU:
//  1. the MPI-free start (llmc/rendezvous.h) with real processes on this machine: every rank gets
//     rank 0's blob, whatever order they start in; a wrong world size, a rank claimed twice, a
//     missing rank and a missing rank 0 each end the start with one clear line and exit code 1,
//     within the timeout;
//  2. the data loader's steps: any split of a global batch into ranks x micro-steps reads the
//     same tokens, across shard ends, and a seek to a saved position continues them;
//  3. optimizer-state parts: written by 3 ranks, read back for 1, 2, 4 and 5 ranks exactly (not
//     the single file an earlier run left for the same step); a missing or foreign part is
//     refused with one line.
#define _DEFAULT_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <fcntl.h>
#include "../llmc/rendezvous.h"
#include "../llmc/dataloader.h"
#include "../llmc/checkpoint.h"

#define BLOB 128
static int passed, failed;
static char addr[64];
static int port;

static void check(int ok, const char *what) {
    if (ok) passed++; else { failed++; printf("FAIL %s\n", what); }
}

// a process as rank `rank` of `world` (start delayed by delay_ms); it exits 0 if it got rank 0's
// blob, 1 through die() (its stderr goes to errfile)
static pid_t spawn(int rank, int world, int delay_ms, double timeout_s, const char *errfile) {
    pid_t pid = fork();
    if (pid != 0) return pid;
    int fd = open(errfile, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    usleep(delay_ms * 1000);
    unsigned char blob[BLOB];
    for (int i = 0; i < BLOB; i++) blob[i] = rank == 0 ? (unsigned char)(i * 37 + 11) : 0;
    rendezvous_tcp(addr, rank, world, blob, BLOB, timeout_s);
    for (int i = 0; i < BLOB; i++) if (blob[i] != (unsigned char)(i * 37 + 11)) _exit(2);
    _exit(0);
}

static int wait_rc(pid_t pid) {
    int status;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// the error file holds exactly one line, "error: ...pattern..."
static int one_error_line(const char *path, const char *pattern) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[512], first[512] = "";
    int n = 0;
    while (fgets(line, sizeof(line), f)) { if (n++ == 0) strcpy(first, line); }
    fclose(f);
    return n == 1 && strncmp(first, "error: ", 7) == 0 && strstr(first, pattern) != NULL;
}

static void next_case(void) { snprintf(addr, sizeof(addr), "127.0.0.1:%d", ++port); }

// a shard of n tokens, token i of shard k = (k * 7919 + i * 31) % 500
static void write_shard(const char *path, int k, int n) {
    FILE *f = fopen_check(path, "wb");
    int h[256] = { SHARD_MAGIC, SHARD_VERSION, n };
    fwrite_check(h, sizeof(int), 256, f, path);
    for (int i = 0; i < n; i++) { uint16_t t = (uint16_t)((k * 7919 + i * 31) % 500); fwrite_check(&t, 2, 1, f, path); }
    fclose_check(f, path);
}

// the inputs of `steps` steps of ranks x micro batches of B x T, concatenated in step order, then
// rank, then micro-step (out: steps * ranks * micro * B * T ints); seek_at >= 0: a fresh set of
// loaders continues from the position after step seek_at
static void read_steps(int *out, const char *pattern, int B, int T, int ranks, int micro, int steps, int seek_at) {
    DataLoader *d = (DataLoader *)calloc_check((size_t)ranks, sizeof(DataLoader));
    for (int r = 0; r < ranks; r++) dataloader_init(&d[r], pattern, B, T, r, ranks, micro, 500);
    size_t n = (size_t)B * T;
    for (int s = 0; s < steps; s++) {
        if (s == seek_at) {  // what a checkpoint keeps: rank 0's position, between steps
            int shard = d[0].shard; long long pos = d[0].pos;
            for (int r = 0; r < ranks; r++) { dataloader_free(&d[r]); dataloader_init(&d[r], pattern, B, T, r, ranks, micro, 500); dataloader_seek(&d[r], shard, pos); }
        }
        for (int r = 0; r < ranks; r++) {
            for (int i = 0; i < micro; i++) {
                dataloader_next(&d[r]);
                memcpy(out + (((size_t)s * ranks + r) * micro + i) * n, d[r].inputs, n * sizeof(int));
            }
        }
    }
    for (int r = 0; r < ranks; r++) dataloader_free(&d[r]);
    free(d);
}

static void test_loader(const char *dir) {
    char a[600], b[600], pattern[600];
    snprintf(a, sizeof(a), "%s/shard_000.bin", dir); snprintf(b, sizeof(b), "%s/shard_001.bin", dir);
    snprintf(pattern, sizeof(pattern), "%s/shard_*.bin", dir);
    write_shard(a, 0, 1000); write_shard(b, 1, 700);  // a step of 6 x 2 x 16 = 192 tokens: ends mid-shard
    int steps = 12, B = 2, T = 16;
    size_t total = (size_t)steps * 6 * B * T;
    int *ref = (int *)malloc_check(total * sizeof(int)), *got = (int *)malloc_check(total * sizeof(int));
    read_steps(ref, pattern, B, T, 1, 6, steps, -1);
    const int splits[4][2] = { { 6, 1 }, { 2, 3 }, { 3, 2 }, { 1, 6 } };
    for (int k = 0; k < 4; k++) {
        read_steps(got, pattern, B, T, splits[k][0], splits[k][1], steps, -1);
        char what[100];
        snprintf(what, sizeof(what), "loader: %d ranks x %d micro-steps read the 1 x 6 tokens", splits[k][0], splits[k][1]);
        check(memcmp(ref, got, total * sizeof(int)) == 0, what);
    }
    read_steps(got, pattern, B, T, 3, 2, steps, 7);
    check(memcmp(ref, got, total * sizeof(int)) == 0, "loader: a seek to step 7's position continues the same tokens");
    int first_b = (int)((1 * 7919 + 0 * 31) % 500), seen = 0;  // shard 1's first token: some step starts there
    for (int s = 0; s < steps; s++) seen |= ref[(size_t)s * 6 * B * T] == first_b;
    check(seen, "loader: the steps go on into the second shard");
    free(ref); free(got);
    unlink(a); unlink(b);
}

// optimizer state of n parameters written as `parts` parts, read back as `ranks` ranges
static void test_state_parts(const char *dir) {
    size_t n = 1001;
    float *m = (float *)malloc_check(n * sizeof(float)), *v = (float *)malloc_check(n * sizeof(float));
    float *rm = (float *)malloc_check(n * sizeof(float)), *rv = (float *)malloc_check(n * sizeof(float));
    for (size_t i = 0; i < n; i++) { m[i] = (float)i * 0.5f; v[i] = 1000.0f - (float)i; }
    TrainState st = { 42, 1, 4096, 7 }, back;
    size_t cut[4] = { 0, 336, 672, n };  // 3 parts of ceil(n / 3)
    checkpoint_write_state(dir, 42, 0, 1, &st, v, m, n, 0, n);  // an earlier single-file run, m and v swapped: must not be read
    for (int p = 0; p < 3; p++) checkpoint_write_state(dir, 42, p, 3, &st, m + cut[p], v + cut[p], n, cut[p], cut[p + 1]);
    const int worlds[4] = { 1, 2, 4, 5 };
    for (int k = 0; k < 4; k++) {
        int w = worlds[k], ok = 1;
        size_t shard = (n + w - 1) / w;
        memset(rm, 0, n * sizeof(float)); memset(rv, 0, n * sizeof(float));
        for (int r = 0; r < w; r++) {
            size_t lo = r * shard < n ? r * shard : n, hi = lo + shard < n ? lo + shard : n;
            checkpoint_read_state(dir, 42, &back, rm + lo, rv + lo, n, lo, hi);
            ok &= back.step == 42 && back.shard == 1 && back.pos == 4096 && back.rng_counter == 7;
        }
        char what[100];
        snprintf(what, sizeof(what), "state: 3 parts read back as %d ranges", w);
        check(ok && memcmp(m, rm, n * sizeof(float)) == 0 && memcmp(v, rv, n * sizeof(float)) == 0, what);
    }
    // a part missing, then a part of another run (other parameter count): one line each
    char path[700], moved[720], err[700];
    snprintf(err, sizeof(err), "%s/err_state", dir);
    checkpoint_state_path(path, sizeof(path), dir, 42, 1, 3);
    snprintf(moved, sizeof(moved), "%s.away", path);
    rename(path, moved);
    for (int c = 0; c < 2; c++) {
        if (c == 1) { rename(moved, path); checkpoint_write_state(dir, 42, 1, 3, &st, m, v, n + 1, cut[1], cut[2]); }
        pid_t pid = fork();
        if (pid == 0) {
            int fd = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            dup2(fd, 2);
            checkpoint_read_state(dir, 42, &back, rm, rv, n, 0, n);
            _exit(0);
        }
        int rc = wait_rc(pid);
        check(rc == 1 && one_error_line(err, c == 0 ? "cannot open" : "parameters"), c == 0 ? "state: a missing part is refused" : "state: a part of another model is refused");
    }
    for (int p = 0; p < 3; p++) { checkpoint_state_path(path, sizeof(path), dir, 42, p, 3); unlink(path); }
    unlink(err);
    free(m); free(v); free(rm); free(rv);
}

int main(void) {
    char dir[] = "/tmp/rdvXXXXXX", err[4][600];
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    for (int i = 0; i < 4; i++) snprintf(err[i], sizeof(err[i]), "%s/err%d", dir, i);
    port = 20000 + getpid() % 20000;

    // 4 ranks, the others before rank 0 (they retry), then rank 0 first (they find it listening)
    for (int order = 0; order < 2; order++) {
        next_case();
        pid_t p[4];
        for (int r = 0; r < 4; r++) p[r] = spawn(r, 4, r == 0 ? (order == 0 ? 400 : 0) : (order == 0 ? 0 : 200), 10.0, err[r]);
        int ok = 1;
        for (int r = 0; r < 4; r++) ok &= wait_rc(p[r]) == 0;
        check(ok, order == 0 ? "4 ranks, rank 0 last: every rank gets the blob" : "4 ranks, rank 0 first: every rank gets the blob");
    }

    // world size mismatch: rank 1 thinks the world is 3
    next_case();
    pid_t a = spawn(0, 2, 0, 5.0, err[0]), b = spawn(1, 3, 100, 5.0, err[1]);
    int ra = wait_rc(a), rb = wait_rc(b);
    check(ra == 1 && one_error_line(err[0], "world size 3"), "world size mismatch: rank 0 names it");
    check(rb == 1 && one_error_line(err[1], "refused"), "world size mismatch: the other rank ends too");

    // two processes claim rank 1
    next_case();
    a = spawn(0, 3, 0, 5.0, err[0]); b = spawn(1, 3, 100, 5.0, err[1]);
    pid_t c = spawn(1, 3, 300, 5.0, err[2]);
    ra = wait_rc(a); wait_rc(b); wait_rc(c);
    check(ra == 1 && one_error_line(err[0], "two processes claim rank 1"), "duplicate rank: rank 0 names it");

    // a rank never comes: rank 0 gives up at the timeout
    next_case();
    double t0 = now_seconds();
    a = spawn(0, 3, 0, 1.5, err[0]); b = spawn(1, 3, 0, 1.5, err[1]);
    ra = wait_rc(a); rb = wait_rc(b);
    double dt = now_seconds() - t0;
    check(ra == 1 && one_error_line(err[0], "only 2 of 3 ranks") && rb == 0 && dt < 4.0, "missing rank: rank 0 ends at the timeout");

    // rank 0 never comes: the others give up at the timeout
    next_case();
    t0 = now_seconds();
    b = spawn(1, 2, 0, 1.5, err[1]);
    rb = wait_rc(b);
    dt = now_seconds() - t0;
    check(rb == 1 && one_error_line(err[1], "did not answer") && dt < 4.0, "missing rank 0: the others end at the timeout");

    // malformed address
    next_case();
    strcpy(addr, "localhost");
    a = spawn(0, 2, 0, 1.0, err[0]);
    check(wait_rc(a) == 1 && one_error_line(err[0], "HOST:PORT"), "malformed --dist-init address");

    test_loader(dir);
    test_state_parts(dir);
    for (int i = 0; i < 4; i++) unlink(err[i]);
    rmdir(dir);
    printf("dist-cpu: %d passed, %d failed\n", passed, failed);
    return failed != 0;
}
