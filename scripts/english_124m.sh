#!/usr/bin/env bash
# GPT-2 124M from scratch on the offline English mix, one run per recipe, same data and seed:
#     bash scripts/english_124m.sh OUT_DIR STEPS RECIPE...      e.g. out/en124m 1000 bf16 "fp4 --occ 0"
# Data: DATA (default data/english), made by
#     python3 dev/data/text_files.py ../shared/data/english_tech.txt.xz -o data/english --shard-size 10000000
# Batch 16 x 1024 tokens, peak LR 6e-4, 5% warmup, cosine to 10%, val every STEPS/10 steps.
# Plot: python3 scripts/plot_curves.py OUT_DIR/* -o curves.png
set -eu
out=$1 steps=$2
shift 2
data=${DATA:-data/english}
mkdir -p "$out"
for recipe in "$@"; do
    read -r -a r <<< "$recipe"
    name=$(echo "$recipe" | tr -d ' -')
    ./train_gpt2_fp4 -e gpt2:d12 -i "$data/english_tech_train_*.bin" -j "$data/english_tech_val_000000.bin" \
        -b 16 -t 1024 -x "$steps" -u $((steps / 20)) -l 6e-4 -q 0.1 -v $((steps / 10)) -m 20 -s 0 \
        -r "${r[0]}" "${r[@]:1}" -o "$out/$name" > "$out/$name.log"
    grep "val loss" "$out/$name.log" | tail -1 | sed "s/^/$name: /"
done
