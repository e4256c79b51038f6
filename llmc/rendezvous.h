// defines: rendezvous_tcp
// The MPI-free start of a multi-process run: rank 0 hands every other rank a small blob (NCCL's
// unique id) over TCP. Race-free by construction: only rank 0 listens, the others retry their
// connection until it answers, and each rank is checked in once (same world size, a rank that no
// other process claimed). Every wait has a deadline, so a missing rank ends the start with one
// clear line instead of a hang.
#ifndef LLMC_RENDEZVOUS_H
#define LLMC_RENDEZVOUS_H

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include "utils.h"

#define RDV_MAGIC 0x4c4c4d43u  // "LLMC"

// sends or receives exactly n bytes before the deadline; returns 0, or -1 on a closed or failed socket
static int rdv_io(int fd, void *buf, size_t n, int sending, double deadline) {
    char *p = (char *)buf;
    while (n > 0) {
        struct pollfd pf = { fd, (short)(sending ? POLLOUT : POLLIN), 0 };
        int left_ms = (int)((deadline - now_seconds()) * 1e3);
        if (left_ms <= 0 || poll(&pf, 1, left_ms) <= 0) return -1;
        ssize_t k = sending ? send(fd, p, n, MSG_NOSIGNAL) : recv(fd, p, n, 0);
        if (k <= 0) return -1;
        p += k; n -= (size_t)k;
    }
    return 0;
}

// addr "HOST:PORT": host of rank 0 as the others reach it; port the one rank 0 listens on
static void rdv_parse(const char *addr, char *host, size_t hn, char *port, size_t pn) {
    const char *colon = strrchr(addr, ':');
    if (colon == NULL || colon == addr || colon[1] == '\0' || (size_t)(colon - addr) >= hn || strlen(colon + 1) >= pn)
        die("--dist-init '%s': expected HOST:PORT", addr);
    memcpy(host, addr, colon - addr); host[colon - addr] = '\0';
    strcpy(port, colon + 1);
    char *end;
    long p = strtol(port, &end, 10);
    if (*end != '\0' || p < 1 || p > 65535) die("--dist-init '%s': bad port", addr);
}

// a listening socket on port, dual-stack where the host has IPv6, else IPv4
static int rdv_listen(const char *port, int backlog) {
    const int families[2] = { AF_INET6, AF_INET };
    for (int i = 0; i < 2; i++) {
        struct addrinfo hints = {0}, *ai;
        hints.ai_family = families[i]; hints.ai_socktype = SOCK_STREAM; hints.ai_flags = AI_PASSIVE;
        if (getaddrinfo(NULL, port, &hints, &ai) != 0) continue;
        int fd = socket(ai->ai_family, SOCK_STREAM, 0), one = 1, zero = 0;
        if (fd < 0) { freeaddrinfo(ai); continue; }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (families[i] == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
        int ok = bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, backlog) == 0;
        int err = errno;
        freeaddrinfo(ai);
        if (ok) return fd;
        close(fd);
        if (err == EADDRINUSE) die("rendezvous: port %s is in use (another run, or pick another port)", port);
    }
    die("rendezvous: cannot listen on port %s: %s", port, strerror(errno));
    return -1;
}

static void rdv_serve(const char *port, int world, const void *blob, uint32_t len, double deadline) {
    int fd = rdv_listen(port, world);
    char *seen = (char *)calloc_check((size_t)world, 1);
    for (int joined = 1; joined < world;) {
        struct pollfd pf = { fd, POLLIN, 0 };
        int left_ms = (int)((deadline - now_seconds()) * 1e3);
        if (left_ms <= 0 || poll(&pf, 1, left_ms) <= 0)
            die("rendezvous: only %d of %d ranks checked in before the timeout", joined, world);
        int c = accept(fd, NULL, NULL);
        if (c < 0) continue;
        uint32_t hello[4];  // magic, rank, world, blob length
        if (rdv_io(c, hello, sizeof(hello), 0, deadline) != 0 || hello[0] != RDV_MAGIC) { close(c); continue; }  // not ours
        if ((int)hello[2] != world) die("rendezvous: rank %u was started with world size %u, rank 0 with %d", hello[1], hello[2], world);
        if (hello[3] != len) die("rendezvous: rank %u expects %u bytes, rank 0 has %u (different builds?)", hello[1], hello[3], len);
        if (hello[1] < 1 || (int)hello[1] >= world) die("rendezvous: a process claims rank %u of %d", hello[1], world);
        if (seen[hello[1]]) die("rendezvous: two processes claim rank %u", hello[1]);
        if (rdv_io(c, (void *)blob, len, 1, deadline) != 0) die("rendezvous: rank %u left during the hand-over", hello[1]);
        seen[hello[1]] = 1;
        joined++;
        close(c);
    }
    free(seen);
    close(fd);
}

static void rdv_join(const char *host, const char *port, int rank, int world, void *blob, uint32_t len, double deadline) {
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC; hints.ai_socktype = SOCK_STREAM;
    for (;;) {  // rank 0 may not be listening yet (or its name not yet resolvable): retry until the deadline
        if (ai == NULL && getaddrinfo(host, port, &hints, &ai) != 0) ai = NULL;
        for (struct addrinfo *p = ai; p != NULL; p = p->ai_next) {
            int fd = socket(p->ai_family, SOCK_STREAM, 0);
            if (fd < 0) continue;
            if (connect(fd, p->ai_addr, p->ai_addrlen) == 0) {
                uint32_t hello[4] = { RDV_MAGIC, (uint32_t)rank, (uint32_t)world, len };
                int ok = rdv_io(fd, hello, sizeof(hello), 1, deadline) == 0 && rdv_io(fd, blob, len, 0, deadline) == 0;
                close(fd);
                if (!ok) die("rendezvous: rank 0 at %s:%s refused rank %d of %d (see rank 0's error)", host, port, rank, world);
                freeaddrinfo(ai);
                return;
            }
            close(fd);
        }
        if (now_seconds() > deadline) die("rendezvous: rank 0 at %s:%s did not answer before the timeout", host, port);
        usleep(100000);
    }
}

// every rank calls this with the same addr and world; rank 0's blob (len bytes) ends up in every
// rank's blob. timeout_s bounds the whole exchange.
static void rendezvous_tcp(const char *addr, int rank, int world, void *blob, uint32_t len, double timeout_s) {
    char host[256], port[16];
    rdv_parse(addr, host, sizeof(host), port, sizeof(port));
    double deadline = now_seconds() + timeout_s;
    if (rank == 0) rdv_serve(port, world, blob, len, deadline);
    else rdv_join(host, port, rank, world, blob, len, deadline);
}

#endif
