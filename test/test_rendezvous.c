// The MPI-free start (llmc/rendezvous.h) with real processes on this machine: every rank gets
// rank 0's blob, whatever order they start in; a wrong world size, a rank claimed twice, a
// missing rank and a missing rank 0 each end the start with one clear line and exit code 1,
// within the timeout.
#define _DEFAULT_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <fcntl.h>
#include "../llmc/rendezvous.h"

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
    double t0 = rdv_now();
    a = spawn(0, 3, 0, 1.5, err[0]); b = spawn(1, 3, 0, 1.5, err[1]);
    ra = wait_rc(a); rb = wait_rc(b);
    double dt = rdv_now() - t0;
    check(ra == 1 && one_error_line(err[0], "only 2 of 3 ranks") && rb == 0 && dt < 4.0, "missing rank: rank 0 ends at the timeout");

    // rank 0 never comes: the others give up at the timeout
    next_case();
    t0 = rdv_now();
    b = spawn(1, 2, 0, 1.5, err[1]);
    rb = wait_rc(b);
    dt = rdv_now() - t0;
    check(rb == 1 && one_error_line(err[1], "did not answer") && dt < 4.0, "missing rank 0: the others end at the timeout");

    // malformed address
    next_case();
    strcpy(addr, "localhost");
    a = spawn(0, 2, 0, 1.0, err[0]);
    check(wait_rc(a) == 1 && one_error_line(err[0], "HOST:PORT"), "malformed --dist-init address");

    for (int i = 0; i < 4; i++) unlink(err[i]);
    rmdir(dir);
    printf("rendezvous: %d passed, %d failed\n", passed, failed);
    return failed != 0;
}
