#!/usr/bin/env bash
# scripts/reproduce_curves.sh and scripts/plot_curves.py end to end, with the CPU trainer on a tiny
# model (BIN, default ./train_gpt2): three recipes x two seeds on two "GPUs" (job slots), the folder
# of each run and seed, the plot, and a table whose means and seed-by-seed gaps are the ones the
# runs' main.jsonl files give; and the script's one-line refusals of bad arguments.
set -u
cd "$(dirname "$0")/.."
bin=${BIN:-./train_gpt2}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
ok() { passed=$((passed + 1)); }
bad() { failed=$((failed + 1)); echo "FAIL $*"; }
[ -f data/tinyshakespeare/tiny_shakespeare_val.bin ] || { echo "error: data/tinyshakespeare missing (make data)"; exit 1; }

tiny=(BIN="$bin" GPUS=2 DATA=data/tinyshakespeare MODEL="gpt2:L=1,C=32,H=2,T=32" B=2 T=32 VAL_STEPS=1)
if env "${tiny[@]}" SEEDS="1 2" bash scripts/reproduce_curves.sh gpt2 "$tmp/c" 4 fp4_naive fp4_operand bf16 > "$tmp/log" 2>&1; then ok
else bad "reproduce_curves.sh failed: $(tail -3 "$tmp/log")"; fi
for d in bf16_s1 bf16_s2 fp4_operand_s1 fp4_operand_s2 fp4_naive_s1 fp4_naive_s2; do
    [ -s "$tmp/c/$d/main.jsonl" ] && [ -s "$tmp/c/$d.log" ] || bad "no run folder and log $d"
done
[ -s "$tmp/c/curves_gpt2.png" ] && ok || bad "no plot"
if msg=$(python3 - "$tmp/c" 2>&1 <<'EOF'
import json, os, sys
out = sys.argv[1]
final = {d: [json.loads(l) for l in open(os.path.join(out, d, "main.jsonl")) if "val_loss" in l][-1]["val_loss"]
         for d in ("bf16_s1", "bf16_s2", "fp4_operand_s1", "fp4_operand_s2", "fp4_naive_s1", "fp4_naive_s2")}
rows = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")[2:-1]]
        for l in open(os.path.join(out, "table_gpt2.md")) if l.startswith("| ") and "---" not in l}
assert list(rows)[1:] == ["bf16", "fp4_operand", "fp4_naive"], rows  # the header, then the baseline first
for name in ("bf16", "fp4_operand", "fp4_naive"):
    seeds, tokens, loss, gap = rows[name]
    a, b = final[name + "_s1"], final[name + "_s2"]
    assert seeds == "2" and tokens == f"{4 * 2 * 32:,}", rows[name]
    assert loss == f"{(a + b) / 2:.4f} ({a:.4f}, {b:.4f})", (loss, a, b)
    g = [100 * (final[name + s] - final["bf16" + s]) / final["bf16" + s] for s in ("_s1", "_s2")]
    assert gap == f"{sum(g) / 2:+.2f}% ({min(g):+.2f} .. {max(g):+.2f})", (gap, g)
EOF
); then ok; else bad "table: $msg"; fi

# bad arguments: one line, exit 2 (usage) or 1 (no data)
expect() {  # what, message, exit code, an environment override or -, reproduce_curves.sh args...
    local what=$1 msg=$2 code=$3 over=$4
    shift 4
    [ "$over" = - ] && over=
    env "${tiny[@]}" $over bash scripts/reproduce_curves.sh "$@" > "$tmp/out" 2> "$tmp/err"
    local rc=$?
    if [ $rc -eq "$code" ] && grep -q "$msg" "$tmp/err" && [ "$(wc -l < "$tmp/err")" -eq 1 ]; then ok
    else bad "$what: exit $rc, $(head -2 "$tmp/err")"; fi
}
expect "unknown run" "unknown run 'fp5'" 2 - gpt2 "$tmp/x" 4 fp5
expect "unknown family" "is not gpt2 or llama" 2 - gpt3 "$tmp/x" 4
expect "steps not a number" "not a positive number" 2 - gpt2 "$tmp/x" four
expect "bad seed" "seed 'x' is not a number" 2 SEEDS=x gpt2 "$tmp/x" 4 bf16
expect "no shards" "no \*_train\*.bin" 1 "DATA=$tmp/none" gpt2 "$tmp/x" 4 bf16

echo "curves: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
