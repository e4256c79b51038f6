// defines: HD
// Marks the functions that compile for both the CPU and the GPU (the shared numerics).
#ifndef LLMC_HD_H
#define LLMC_HD_H
#ifdef __CUDACC__
#define HD __host__ __device__
#else
#define HD
#endif
#endif
