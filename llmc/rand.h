// defines: splitmix64, rng_hash, rng_uniform, rng_normal, Rng (a counter-based stream)
// Counter-based: element i of stream key is a pure function of (key, i), so the CPU, every GPU
// thread and the PyTorch reference draw identical numbers with no shared state (SPEC.md 2).
#ifndef LLMC_RAND_H
#define LLMC_RAND_H

#include <stdint.h>
#include <math.h>

#include "hd.h"

static HD inline uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static HD inline uint64_t rng_hash(uint64_t a, uint64_t b) { return splitmix64(a ^ splitmix64(b)); }

// uniform in (0, 1]: 24 random bits, exact in float32 and never 0 (safe under log)
static HD inline float rng_uniform(uint64_t h) { return (float)((h >> 40) + 1) * 0x1p-24f; }

// standard normal by Box-Muller in double, element i of stream key
static HD inline double rng_normal(uint64_t key, uint64_t i) {
    double u1 = rng_uniform(rng_hash(key, 2 * i));
    double u2 = rng_uniform(rng_hash(key, 2 * i + 1));
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

// a sequential stream for host-side draws (sampling, data order); checkpointing saves `counter`
typedef struct { uint64_t key; uint64_t counter; } Rng;

static inline Rng rng_init(uint64_t seed) { Rng r = { splitmix64(seed), 0 }; return r; }
static inline float rng_next_uniform(Rng *r) { return rng_uniform(rng_hash(r->key, r->counter++)); }

#endif
