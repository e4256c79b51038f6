#!/usr/bin/env bash
# One device call: build, every GPU test, then the benchmark, with logs under $OUT (default
# out/device). Usage: bash dev/check_and_bench.sh [bench configs, default gpt2:d12:32]
# TESTS=0 skips the tests, BENCH=0 the benchmark, BENCH_FLAGS adds flags to dev/bench/bench.py (e.g. --no-pytorch),
# RECIPES its recipes, separated by ';' (default "bf16;fp8;fp4 --occ 0;fp4;fp4 --occ-comp 2"),
# PROFILE="gpt2:d12@32@fp4 gpt2:d12@32@fp4@--occ,0 ..." adds per-kernel profiles
# (MODEL@BATCH@RECIPE[@TRAINER_FLAGS, commas for spaces]) at the end, and
# DETAIL="gpt2:d12@8@fp4@occ_rows_kernel<.*2> ..." ncu's full report of one launch of each kernel
# that the regex (ncu's demangled name) matches, into detail_N.txt (MODEL@BATCH@RECIPE@REGEX[@SKIP]).
set -u
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
out=${OUT:-out/device}
mkdir -p "$out"
make -j16 all > "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
python3 dev/data/tinyshakespeare.py > /dev/null
stamp built
if [ "${TESTS:-1}" = 1 ]; then
./test/test_quant_gpu > "$out/quant_gpu.log" 2>&1; tail -8 "$out/quant_gpu.log"
./test/test_kernels_gpu > "$out/kernels_gpu.log" 2>&1; cat "$out/kernels_gpu.log"
VERBOSE=1 ./test/test_gpu_train test/ref/*.bin > "$out/gpu_train.log" 2>&1; grep -v "^  " "$out/gpu_train.log"
BIN=./train_gpt2_fp4 RECIPES="bf16 fp8 fp4" bash test/test_train_run.sh > "$out/trainrun.log" 2>&1
tail -9 "$out/trainrun.log"
stamp tested
fi
if [ "${BENCH:-1}" = 1 ]; then
    IFS=';' read -r -a recipes <<< "${RECIPES:-bf16;fp8;fp4 --occ 0;fp4;fp4 --occ-comp 2}"
    python3 dev/bench/bench.py ${BENCH_FLAGS:-} --recipes "${recipes[@]}" --configs "${@:-gpt2:d12:32}" > "$out/bench.md" 2> "$out/bench.err"
    cat "$out/bench.md"; tail -5 "$out/bench.err"
    stamp benchmarked
fi
i=0
for p in ${PROFILE:-}; do
    IFS=@ read -r model batch recipe flags <<< "$p"
    i=$((i + 1))
    python3 dev/bench/kernel_profile.py -e "$model" -b "$batch" -r "$recipe" ${flags//,/ } > "$out/profile_$i.md" 2>&1
    head -24 "$out/profile_$i.md"
done
i=0
set -f  # the regexes are no globs
for p in ${DETAIL:-}; do
    IFS=@ read -r model batch recipe regex skip <<< "$p"
    i=$((i + 1))
    python3 dev/bench/kernel_profile.py -e "$model" -b "$batch" -r "$recipe" --detail "$regex" --skip "${skip:-0}" > "$out/detail_$i.txt" 2>&1
    echo "detail $i ($regex): $(grep -E "^  [a-z_]+.*<|Duration|Memory Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per|Waves Per SM" "$out/detail_$i.txt" | tr -s ' ' | tr '\n' ';')"
done
