#!/usr/bin/env bash
# One device call for issue 5's Table 1 on a checkpoint of our own: GPT-2 124M trained in fp4 on
# the GPU (English shards in DATA, default shared/english: 20M-token shards carried from here),
# then the CPU trainer measures the activations of that checkpoint under the five settings
# (`--quant-stats 1`, one batch, no update) on the machine's CPU cores; logs under $OUT.
#     bash dev/table1.sh [STEPS, default 1500]
set -u
out=${OUT:-out/device}
steps=${1:-1500}
data=${DATA:-shared/english}
mkdir -p "$out"
make -j16 train_gpt2 train_gpt2_fp4 > "$out/build.log" 2>&1 || { tail -20 "$out/build.log"; exit 1; }
./train_gpt2_fp4 -e gpt2:d12 -r fp4 -i "$data/*_train_*.bin" -j "$data/english_tech_val_000000.bin" -b 16 -t 1024 \
    -x "$steps" -u $((steps / 20)) -l 6e-4 -v $((steps / 5)) -m 10 -z none -o "$out/fp4_124m" > "$out/train.log" 2>&1 \
    || { tail -5 "$out/train.log"; exit 1; }
grep "val loss" "$out/train.log" | tail -2
ckpt=$(printf "%s/fp4_124m/model_%08d.bin" "$out" "$steps")
OMP_NUM_THREADS=$(nproc) ./train_gpt2 -e "$ckpt" -r fp4 -i "$data/english_tech_val_000000.bin" -j "$data/english_tech_val_000000.bin" \
    -b 4 -t 1024 -x 1 -l 0 -v 0 -m 1 -z none --quant-stats 1 -o "$out/table1" > "$out/table1.log" 2>&1 || { tail -5 "$out/table1.log"; exit 1; }
python3 scripts/quant_stats.py "$out/table1" -o "$out/table1.png" --title "GPT-2 124M, fp4, $steps steps" | tee "$out/table1.md"
# the big checkpoint does not come back from the device
rm -f "$out"/fp4_124m/*.bin "$out"/table1/*.bin
