#!/usr/bin/env bash
# Data-parallel training on the GPUs of one machine:
#     scripts/run_multi_gpu.sh N [train_gpt2_fp4 flags...]
# One process per GPU. With Open MPI's mpirun on the PATH and a trainer built with MPI, through
# `mpirun -np N`; otherwise (or LAUNCHER=local) N processes started here with RANK / WORLD_SIZE /
# LOCAL_RANK and a TCP rendezvous on 127.0.0.1:PORT (default 29500). If any process ends with an
# error, the others are stopped and the script exits with that process's code.
# BIN: the trainer (default ./train_gpt2_fp4).
set -u
[ $# -ge 1 ] && [[ $1 =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 N [trainer flags...]" >&2; exit 2; }
n=$1; shift
cd "$(dirname "$0")/.."
bin=${BIN:-./train_gpt2_fp4}
launcher=${LAUNCHER:-}
if [ -z "$launcher" ]; then
    launcher=local
    if command -v mpirun > /dev/null && ldd "$bin" 2>/dev/null | grep -q libmpi; then launcher=mpi; fi
fi

if [ "$launcher" = mpi ]; then
    # root inside containers needs Open MPI's consent; NCCL_* settings travel with -x
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    xs=()
    for v in $(env | grep -o '^NCCL_[A-Z_]*'); do xs+=(-x "$v"); done
    exec mpirun -np "$n" --bind-to none "${xs[@]}" "$bin" "$@"
fi

pids=()
for ((r = 0; r < n; r++)); do
    RANK=$r WORLD_SIZE=$n LOCAL_RANK=$r "$bin" "$@" --dist-init "127.0.0.1:${PORT:-29500}" &
    pids+=($!)
done
stop() { kill "${pids[@]}" 2> /dev/null; wait; }
trap 'stop; exit 130' INT TERM
rc=0
for ((left = n; left > 0; left--)); do
    wait -n "${pids[@]}"
    rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "run_multi_gpu: a rank exited with code $rc: stopping the others" >&2
        stop
        break
    fi
done
exit "$rc"
