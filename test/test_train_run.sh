#!/usr/bin/env bash
# End-to-end runs of a trainer (BIN, default ./train_gpt2) in each of RECIPES (default fp32 fp4),
# with the extra flags EXTRA (default none):
#  1. resume: a run stopped at a checkpoint and resumed ends with the same bytes as one that
#     never stopped (model, optimizer state, data position);
#  2. learning: small GPT-2 and LLaMA models on tiny shakespeare lower their val loss by at
#     least 1.5 nats in 40 steps (from ~10.8).
set -u
cd "$(dirname "$0")/.."
bin=${BIN:-./train_gpt2}
recipes=${RECIPES:-fp32 fp4}
data=data/tinyshakespeare
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
ok() { passed=$((passed + 1)); }
bad() { failed=$((failed + 1)); echo "FAIL $*"; }

[ -f "$data/tiny_shakespeare_train.bin" ] || { echo "error: $data missing (make data)"; exit 1; }
read -r -a extra <<< "${EXTRA:-}"
common=(-i "$data/tiny_shakespeare_train.bin" -j "$data/tiny_shakespeare_val.bin" -z data/gpt2_tokenizer.bin "${extra[@]}")

for recipe in $recipes; do
    args=("${common[@]}" -e "llama:L=2,C=64,H=4,KV=2,F=128,T=32" -b 2 -t 32 -x 6 -u 2 -v 0 -m 1 -r "$recipe")
    "$bin" "${args[@]}" -n 3 -o "$tmp/full_$recipe" > /dev/null || bad "$recipe: full run"
    mkdir -p "$tmp/resumed_$recipe"
    cp "$tmp/full_$recipe"/*_00000003.bin "$tmp/resumed_$recipe/"
    "$bin" "${args[@]}" -n 3 -y 1 -o "$tmp/resumed_$recipe" > /dev/null || bad "$recipe: resumed run"
    for f in model_00000006.bin state_00000006.bin; do
        if cmp -s "$tmp/full_$recipe/$f" "$tmp/resumed_$recipe/$f"; then ok; else bad "$recipe: resumed $f differs from the uninterrupted run's"; fi
    done
done

for model in "gpt2:L=2,C=64,H=4,T=64" "llama:L=2,C=64,H=4,KV=2,F=192,T=64"; do
    for recipe in $recipes; do
        out="$tmp/learn.log"
        "$bin" "${common[@]}" -e "$model" -r "$recipe" -b 4 -t 64 -x 40 -u 5 -l 2e-3 -v 40 -m 4 > "$out" || { bad "$model $recipe: run failed"; continue; }
        first=$(grep "val loss" "$out" | head -1 | awk '{print $NF}')
        last=$(grep "val loss" "$out" | tail -1 | awk '{print $NF}')
        echo "$model $recipe: val loss $first -> $last"
        if awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a - 1.5) }'; then ok; else bad "$model $recipe: val loss $first -> $last"; fi
    done
done

echo "trainrun ($bin): $passed passed, $failed failed"
[ "$failed" -eq 0 ]
