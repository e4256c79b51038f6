#!/usr/bin/env bash
# Data parallel on N GPUs (default: all visible, at least 2) against one GPU, tiny shakespeare:
#  1. same global batch, same data: N ranks track the 1-GPU loss trajectory (20 steps, bf16, fp8
#     and fp4, GPT-2 and LLaMA) within TOL_BF16 / TOL_FP4 (largest relative difference of a step's
#     loss; fp8 takes fp4's); the trainer checks every step that the weights are bit-identical on
#     all ranks;
#  2. ZeRO-1 (sharded optimizer state) gives bit-identical losses and model file to --zero 0;
#  3. a rank killed mid-run (kill -9, no launcher to clean up) ends the other ranks with one error
#     line within the NCCL timeout; the run resumed from its last checkpoint ends with the same
#     model bytes as a run that was never stopped;
#  4. a checkpoint of N ranks resumes on 1 GPU (the state shards are re-cut) and tracks the N-rank
#     continuation;
#  5. with mpirun (if there, and the trainer built with MPI): the same losses as the MPI-free start,
#     and a killed rank ends the job.
set -u
cd "$(dirname "$0")/.."
bin=${BIN:-./train_gpt2_fp4}
n=${NGPU:-$(nvidia-smi -L | wc -l)}
tol_bf16=${TOL_BF16:-2e-3}
tol_fp4=${TOL_FP4:-1e-2}
data=data/tinyshakespeare
[ "$n" -ge 2 ] || { echo "error: test_multi_gpu needs at least 2 GPUs (found $n)"; exit 1; }
[ -f "$data/tiny_shakespeare_train.bin" ] || { echo "error: $data missing (make data)"; exit 1; }
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2> /dev/null; rm -rf "$tmp"' EXIT
passed=0 failed=0
ok() { passed=$((passed + 1)); }
bad() { failed=$((failed + 1)); echo "FAIL $*"; }
port=$((20000 + $$ % 20000))
common=(-i "$data/tiny_shakespeare_train.bin" -j "$data/tiny_shakespeare_train.bin" -z none -v 0 -m 1 -u 5 -l 1e-3 -t 128)

# ranks R: R processes started here without MPI (the trainer's own watchdog is all there is)
ranks() {
    local r=$1; shift
    port=$((port + 1))
    local pids=()
    for ((k = 0; k < r; k++)); do
        RANK=$k WORLD_SIZE=$r LOCAL_RANK=$k "$bin" "$@" --dist-init "127.0.0.1:$port" --nccl-timeout 20 &
        pids+=($!)
    done
    local rc=0
    for p in "${pids[@]}"; do wait "$p" || rc=1; done
    return $rc
}
losses() { grep -o '"train_loss": [0-9.e+-]*' "$1/main.jsonl" | awk '{print $2}'; }
# the largest relative difference between two runs' step losses
maxdiff() { paste <(losses "$1") <(losses "$2") | awk '{d = $1 - $2; if (d < 0) d = -d; d /= $2; if (d > m) m = d} END {printf "%.2e", m}'; }
within() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }

# 1 + 2: trajectories (B = 4 per rank, the same global batch on one GPU by accumulation)
for spec in "gpt2:L=4,C=128,H=4,T=128 bf16" "gpt2:L=4,C=128,H=4,T=128 fp8" "gpt2:L=4,C=128,H=4,T=128 fp4" \
            "llama:L=4,C=128,H=4,KV=2,F=256,T=128 fp4"; do
    read -r model recipe <<< "$spec"
    args=("${common[@]}" -e "$model" -r "$recipe" -b 4 -d $((4 * 128 * n)) -x 20)
    "$bin" "${args[@]}" -o "$tmp/one" > "$tmp/one.log" 2>&1 || { bad "$spec: 1 GPU run"; cat "$tmp/one.log"; continue; }
    ranks "$n" "${args[@]}" -o "$tmp/many" > "$tmp/many.log" 2>&1 || { bad "$spec: $n-rank run"; cat "$tmp/many.log"; continue; }
    ranks "$n" "${args[@]}" -o "$tmp/nozero" --zero 0 > "$tmp/nozero.log" 2>&1 || { bad "$spec: $n-rank run, --zero 0"; continue; }
    tol=$tol_bf16; [ "$recipe" = bf16 ] || tol=$tol_fp4
    d=$(maxdiff "$tmp/many" "$tmp/one")
    echo "$spec: $n ranks vs 1 GPU, 20 steps: largest loss difference $d (bound $tol); $(grep -o 'hash [0-9a-f]*' "$tmp/many.log")"
    if within "$d" "$tol"; then ok; else bad "$spec: $n ranks vs 1 GPU: $d > $tol"; fi
    grep -q "replicas: weights bit-identical on all $n ranks" "$tmp/many.log" && ok || bad "$spec: no replica check in the log"
    if cmp -s <(losses "$tmp/many") <(losses "$tmp/nozero") && cmp -s "$tmp/many/model_00000020.bin" "$tmp/nozero/model_00000020.bin"; then ok
    else bad "$spec: ZeRO-1 and --zero 0 differ"; fi
    rm -rf "$tmp/one" "$tmp/many" "$tmp/nozero"
done

# 3: kill a rank, resume
args=("${common[@]}" -e "gpt2:L=2,C=64,H=4,T=128" -r bf16 -b 4 -x 400 -n 100)
ranks "$n" "${args[@]}" -o "$tmp/full" > /dev/null 2>&1 || bad "kill: uninterrupted run"
port=$((port + 1))
pids=()
for ((k = 0; k < n; k++)); do
    RANK=$k WORLD_SIZE=$n LOCAL_RANK=$k "$bin" "${args[@]}" -o "$tmp/killed" --dist-init "127.0.0.1:$port" --nccl-timeout 20 \
        > /dev/null 2> "$tmp/err$k" &
    pids+=($!)
done
for ((i = 0; i < 600; i++)); do [ -f "$tmp/killed/model_00000100.bin" ] && break; sleep 0.1; done
kill -9 "${pids[1]}"
t0=$(date +%s)
rc=0; wait "${pids[0]}" || rc=$?
dt=$(($(date +%s) - t0))
for ((k = 2; k < n; k++)); do wait "${pids[$k]}"; done
echo "kill: rank 1 killed after the step-100 checkpoint; rank 0 exited with $rc after $dt s: $(cat "$tmp/err0")"
if [ "$rc" -eq 1 ] && [ "$(wc -l < "$tmp/err0")" -eq 1 ] && grep -q "^error: rank 0: " "$tmp/err0" && [ "$dt" -le 60 ]; then ok
else bad "kill: rank 0 did not end cleanly (exit $rc after $dt s)"; fi
[ ! -f "$tmp/killed/model_00000400.bin" ] || bad "kill: the run finished before the kill (make it longer)"
ranks "$n" "${args[@]}" -o "$tmp/killed" -y 1 > "$tmp/resume.log" 2>&1 || bad "kill: resumed run failed"
if cmp -s "$tmp/full/model_00000400.bin" "$tmp/killed/model_00000400.bin"; then ok
else bad "kill: resumed run's model differs from the uninterrupted run's"; fi

# 4: the N-rank checkpoint at step 100 on one GPU (same global batch: accumulation over N)
args=("${common[@]}" -e "gpt2:L=2,C=64,H=4,T=128" -r bf16 -b 4 -d $((4 * 128 * n)) -x 120 -n 100)
ranks "$n" "${args[@]}" -o "$tmp/full2" > /dev/null 2>&1 || bad "reshard: $n-rank run"
mkdir -p "$tmp/one"
cp "$tmp/full2"/model_00000100.bin "$tmp/full2"/state_00000100_rank*.bin "$tmp/one/"
"$bin" "${args[@]}" -o "$tmp/one" -y 1 > "$tmp/one.log" 2>&1 || { bad "reshard: resume on 1 GPU failed"; cat "$tmp/one.log"; }
paste <(losses "$tmp/full2" | sed -n '101,120p') <(losses "$tmp/one") > "$tmp/pairs"
d=$(awk '{d = $1 - $2; if (d < 0) d = -d; d /= $1; if (d > m) m = d} END {printf "%.2e", m}' "$tmp/pairs")
echo "reshard: $n-rank checkpoint resumed on 1 GPU, steps 101-120: largest loss difference $d (bound $tol_bf16), $(wc -l < "$tmp/pairs") steps"
if [ "$(wc -l < "$tmp/pairs")" -eq 20 ] && within "$d" "$tol_bf16"; then ok; else bad "reshard: $d"; fi

# 5: mpirun
if command -v mpirun > /dev/null && ldd "$bin" | grep -q libmpi; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    args=("${common[@]}" -e "gpt2:L=4,C=128,H=4,T=128" -r fp4 -b 4 -x 20)
    ranks "$n" "${args[@]}" -o "$tmp/local" > /dev/null 2>&1
    mpirun -np "$n" --bind-to none "$bin" "${args[@]}" -o "$tmp/mpi" > "$tmp/mpi.log" 2>&1 || { bad "mpirun: run failed"; tail -5 "$tmp/mpi.log"; }
    if cmp -s <(losses "$tmp/local") <(losses "$tmp/mpi"); then ok; else bad "mpirun: losses differ from the MPI-free start"; fi
    mpirun -np "$n" --bind-to none "$bin" "${args[@]}" -x 100000 --nccl-timeout 20 > "$tmp/mpikill.log" 2>&1 &
    mpid=$!
    sleep 15
    mine="^$bin .*-x 100000"  # the ranks, not mpirun
    victim=$(pgrep -f "$mine" | tail -n 1)
    kill -9 "$victim"
    t0=$(date +%s)
    rc=0; wait "$mpid" || rc=$?
    dt=$(($(date +%s) - t0))
    left=$(pgrep -f "$mine" | wc -l)
    echo "mpirun kill: rank process $victim killed; mpirun exited with $rc after $dt s, $left rank(s) left"
    if [ "$rc" -ne 0 ] && [ "$dt" -le 60 ] && [ "$left" -eq 0 ]; then ok; else bad "mpirun kill: exit $rc after $dt s, $left left"; fi
else
    echo "mpirun: SKIPPED (no mpirun, or $bin built without MPI)"
fi

echo "multi-gpu ($n GPUs): $passed passed, $failed failed"
[ "$failed" -eq 0 ]
