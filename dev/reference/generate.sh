#!/usr/bin/env bash
# Regenerates the committed reference states in test/ref/ (SPEC.md section 6) and checks each.
#   dev/reference/generate.sh [--device cpu|cuda] [--out DIR]
# Needs python3 with torch and numpy. About a minute on a CPU.
set -euo pipefail

device=cpu
out=test/ref
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "usage: $0 [--device cpu|cuda] [--out DIR]" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/../.."
py=${PYTHON:-python3}
ref=dev/reference/reference.py
mkdir -p "$out"

gpt2="gpt2:L=3,C=64,H=4,T=64,V=50257"
llama="llama:L=3,C=64,H=4,KV=2,F=192,T=64,V=50257"
common=(--B 2 --Tb 32 --steps 10 --seed 1337 --lr 1e-3 --beta1 0.9 --beta2 0.95 --eps 1e-8
        --wd 0.1 --clip 1.0 --device "$device" --quiet)
fp4=(--recipe fp4 --fp4 e2m1 --dge 1 --dge-k 5 --occ 1 --occ-alpha 0.99 --grad-format e4m3
     --scaling vector --fp4-attn 0)

gen() {  # name model recipe-args...
    local name=$1 model=$2
    shift 2
    "$py" "$ref" --model "$model" "${common[@]}" "$@" --out "$out/$name.bin"
    "$py" "$ref" --check "$out/$name.bin" > /dev/null
    printf '%-16s %8d bytes\n' "$name.bin" "$(stat -c %s "$out/$name.bin")"
}

gen gpt2_fp32 "$gpt2" --recipe fp32
gen gpt2_fp4 "$gpt2" "${fp4[@]}"
gen gpt2_fp8 "$gpt2" --recipe fp8 --grad-format e4m3 --scaling vector
gen llama_fp32 "$llama" --recipe fp32
gen llama_fp4 "$llama" "${fp4[@]}"
gen gpt2_fp4_noocc "$gpt2" "${fp4[@]}" --occ 0
gen llama_fp4_noocc "$llama" "${fp4[@]}" --occ 0
gen gpt2_fp4_naive "$gpt2" "${fp4[@]}" --occ 0 --dge 0 --scaling tensor  # reproduce_curves.sh's naive FP4
gen gpt2_fp4_operand "$gpt2" "${fp4[@]}" --occ-comp operand  # OCC's compensation in the operand
gen llama_fp4_operand "$llama" "${fp4[@]}" --occ-comp operand

total=$(du -cb "$out"/*.bin | tail -1 | cut -f1)
echo "total $total bytes"
[ "$total" -lt 7340032 ] || { echo "test/ref is over 7 MiB" >&2; exit 1; }
