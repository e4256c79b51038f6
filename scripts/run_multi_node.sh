#!/usr/bin/env bash
# Data-parallel training over several machines, one process per GPU.
#
# With Open MPI (the trainer built with MPI, the same paths on every node):
#     HOSTS=node1:8,node2:8 scripts/run_multi_node.sh [train_gpt2_fp4 flags...]
# Under SLURM without MPI (one task per GPU; rank 0's node is the first of the allocation):
#     srun --ntasks-per-node=8 --gpus-per-node=8 scripts/run_multi_node.sh [flags...]
# The output folder (-o) must be on a filesystem every node sees: rank 0 writes the model, each
# rank its optimizer shard, and a resumed run reads them all. The token shards must be readable
# on every node. PORT: the rendezvous port (default 29500). BIN: the trainer.
set -u
cd "$(dirname "$0")/.."
bin=${BIN:-./train_gpt2_fp4}

if [ -n "${SLURM_PROCID:-}" ] && [ -z "${HOSTS:-}" ]; then
    master=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID exec "$bin" "$@" --dist-init "$master:${PORT:-29500}"
fi

[ -n "${HOSTS:-}" ] || { echo "usage: HOSTS=a:8,b:8 $0 [flags...]   (or inside srun)" >&2; exit 2; }
total=0
IFS=, read -r -a hosts <<< "$HOSTS"
for h in "${hosts[@]}"; do
    slots=${h##*:}
    [[ $h == *:* && $slots =~ ^[1-9][0-9]*$ ]] || { echo "error: HOSTS entry '$h' is not NAME:GPUS" >&2; exit 2; }
    total=$((total + slots))
done
xs=()
for v in $(env | grep -o '^NCCL_[A-Z_]*'); do xs+=(-x "$v"); done
exec mpirun -np "$total" --host "$HOSTS" --bind-to none -x PATH -x LD_LIBRARY_PATH "${xs[@]}" "$bin" "$@"
