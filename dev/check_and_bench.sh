#!/usr/bin/env bash
# One device call: build, every GPU test, then the benchmark, with logs under $OUT (default
# out/device). Usage: bash dev/check_and_bench.sh [bench configs, default gpt2:d12:32]
set -u
out=${OUT:-out/device}
mkdir -p "$out"
make -j16 all > "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
python3 dev/data/tinyshakespeare.py > /dev/null
./test/test_quant_gpu > "$out/quant_gpu.log" 2>&1; tail -8 "$out/quant_gpu.log"
./test/test_kernels_gpu > "$out/kernels_gpu.log" 2>&1; cat "$out/kernels_gpu.log"
VERBOSE=1 ./test/test_gpu_train test/ref/*.bin > "$out/gpu_train.log" 2>&1; grep -v "^  " "$out/gpu_train.log"
BIN=./train_gpt2_fp4 RECIPES="bf16 fp8 fp4" EXTRA="--occ 0" bash test/test_train_run.sh > "$out/trainrun.log" 2>&1
tail -9 "$out/trainrun.log"
[ "${BENCH:-1}" = 1 ] || exit 0
python3 dev/bench/bench.py --configs "${@:-gpt2:d12:32}" > "$out/bench.md" 2> "$out/bench.err"
cat "$out/bench.md"; tail -5 "$out/bench.err"
