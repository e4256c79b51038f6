#!/usr/bin/env bash
# The FP4-vs-BF16 curves with ablations: the same model from the same seed on the same data in
#   bf16, fp8, fp4 (full recipe), fp4 without DGE, fp4 without OCC, naive fp4 (tensor-wise
#   scaling, no DGE, no OCC),
# one run per GPU at a time (each on the next free GPU), then one PNG and a table of final val loss
# (gap to bf16):
#     scripts/reproduce_curves.sh gpt2|llama OUT_DIR STEPS [RUN...]
# RUN: names from the list above (bf16 fp8 fp4 fp4_nodge fp4_noocc fp4_naive; default all), or
# fp4_clamp (OCC's clamp without its compensation), fp4_operand (OCC's compensation in the operand:
# --occ-comp 2), bf16_attn8 and fp4_attn8 (bf16 and fp4 with the FP8 attention core).
# Hyper-parameters as the paper's where they apply: AdamW 0.9 / 0.95, weight decay 0.1, warmup
# 5% of the steps, cosine to 10% of the peak LR. Environment (defaults in brackets):
#   DATA [data/english]: train/val shards of dev/data/text_files.py, e.g.
#        python3 dev/data/text_files.py ../shared/data/english_tech.txt.xz -o data/english
#   B [16] T [1024] LR [6e-4] VAL_EVERY [STEPS/20] VAL_STEPS [20]
#   GPUS [all visible]: how many runs at once, on GPUs FIRST_GPU .. FIRST_GPU + GPUS - 1 [FIRST_GPU 0]
#        (both families on one 8-GPU machine: GPUS=4 for gpt2, GPUS=4 FIRST_GPU=4 for llama)
#   MODEL: the descriptor (gpt2: gpt2:d12, 124M; llama: a LLaMA of about the same size)
#   BIN [./train_gpt2_fp4]: the trainer (./train_gpt2 runs the same on the CPU, small models)
#   SEEDS [1337]: initialization seeds; with several, each run once per seed (folders RUN_sSEED),
#        plotted as the mean with the seeds' band, and each gap taken seed by seed (the same init)
#   EXTRA: flags added to every run
set -u
(( BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] >= 501 )) || { echo "error: needs bash 5.1 or newer (wait -p), this is $BASH_VERSION" >&2; exit 1; }
[ $# -ge 3 ] || { echo "usage: $0 gpt2|llama OUT_DIR STEPS [RUN...]" >&2; exit 2; }
arch=$1 out=$2 steps=$3
shift 3
cd "$(dirname "$0")/.."
case $arch in
    gpt2) model=${MODEL:-gpt2:d12} ;;
    llama) model=${MODEL:-llama:L=12,C=768,H=12,KV=4,T=1024} ;;
    *) echo "error: model family '$arch' is not gpt2 or llama" >&2; exit 2 ;;
esac
[[ $steps =~ ^[1-9][0-9]*$ ]] || { echo "error: STEPS '$steps' is not a positive number" >&2; exit 2; }
declare -A flags=(
    [bf16]="-r bf16" [fp8]="-r fp8" [fp4]="-r fp4" [fp4_nodge]="-r fp4 --dge 0" [fp4_noocc]="-r fp4 --occ 0"
    [fp4_naive]="-r fp4 --scaling tensor --dge 0 --occ 0" [fp4_clamp]="-r fp4 --occ-comp 0" [fp4_operand]="-r fp4 --occ-comp 2"
    [bf16_attn8]="-r bf16 --attn-core fp8" [fp4_attn8]="-r fp4 --attn-core fp8"
)
order=(bf16 bf16_attn8 fp8 fp4 fp4_attn8 fp4_nodge fp4_clamp fp4_operand fp4_noocc fp4_naive)  # the plot's and table's
for r in "${!flags[@]}"; do [[ " ${order[*]} " == *" $r "* ]] || { echo "error: run '$r' has no place in the order" >&2; exit 1; }; done
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(bf16 fp8 fp4 fp4_nodge fp4_noocc fp4_naive)
for r in "${runs[@]}"; do [ -n "${flags[$r]:-}" ] || { echo "error: unknown run '$r' (${!flags[*]})" >&2; exit 2; }; done
bin=${BIN:-./train_gpt2_fp4}
data=${DATA:-data/english}
train=$(ls "$data"/*_train*.bin 2> /dev/null | head -n 1)
val=$(ls "$data"/*_val*.bin 2> /dev/null | head -n 1)
[ -n "$train" ] && [ -n "$val" ] || { echo "error: no *_train*.bin / *_val*.bin shards in $data (see the header of $0)" >&2; exit 1; }
gpus=${GPUS:-$(nvidia-smi -L 2> /dev/null | wc -l)}
[ "$gpus" -ge 1 ] 2> /dev/null || gpus=1
val_every=${VAL_EVERY:-$(( steps / 20 > 0 ? steps / 20 : 1 ))}
mkdir -p "$out"
common=(-e "$model" -i "${train%_train*}_train*.bin" -j "$val" -b "${B:-16}" -t "${T:-1024}" -x "$steps"
        -u $(( steps / 20 )) -l "${LR:-6e-4}" -q 0.1 -c 0.1 --beta1 0.9 --beta2 0.95 -v "$val_every" -m "${VAL_STEPS:-20}" -s 0)
read -r -a extra <<< "${EXTRA:-}"
read -r -a seeds <<< "${SEEDS:-1337}"
for sd in "${seeds[@]}"; do [[ $sd =~ ^[0-9]+$ ]] || { echo "error: seed '$sd' is not a number" >&2; exit 2; }; done
job() { [ ${#seeds[@]} -eq 1 ] && echo "$1" || echo "$1_s$2"; }  # a run's folder and log name
echo "$arch ($model): ${runs[*]}, seeds ${seeds[*]}, $steps steps of ${B:-16} x ${T:-1024} tokens, $gpus at a time, logs in $out/"

# each run on a free GPU, at most gpus at once, the slowest (OCC) first; remember how each ended
declare -A pid_run=() pid_gpu=() pid_start=()
free=()
for ((g = 0; g < gpus; g++)); do free+=($(( ${FIRST_GPU:-0} + g ))); done
failed=0
reap() {
    local p rc
    wait -n -p p "${!pid_run[@]}"
    rc=$?
    echo "  ${pid_run[$p]} (GPU ${pid_gpu[$p]}, $(( $(date +%s) - pid_start[$p] )) s): $( [ $rc -eq 0 ] && grep "val loss" "$out/${pid_run[$p]}.log" | tail -n 1 | awk '{print "val loss " $NF}' || echo "FAILED (exit $rc, $out/${pid_run[$p]}.log)")"
    [ $rc -eq 0 ] || failed=$((failed + 1))
    free+=("${pid_gpu[$p]}")
    unset "pid_run[$p]" "pid_gpu[$p]" "pid_start[$p]"
}
start_s=$(date +%s)
for (( i = ${#order[@]} - 1; i >= 0; i-- )); do  # the slower 4-bit runs first
    r=${order[i]}
    for s in "${runs[@]}"; do
        [ "$s" = "$r" ] || continue
        for sd in "${seeds[@]}"; do
            [ ${#free[@]} -gt 0 ] || reap
            gpu=${free[0]}
            free=("${free[@]:1}")
            read -r -a f <<< "${flags[$r]}"
            j=$(job "$r" "$sd")
            rm -rf "${out:?}/$j"
            CUDA_VISIBLE_DEVICES=$gpu "$bin" "${common[@]}" "${f[@]}" --seed "$sd" "${extra[@]}" -o "$out/$j" > "$out/$j.log" 2>&1 &
            pid_run[$!]=$j pid_gpu[$!]=$gpu pid_start[$!]=$(date +%s)
        done
    done
done
while [ ${#pid_run[@]} -gt 0 ]; do reap; done
echo "wall time $(( $(date +%s) - start_s )) s, $failed failed"
[ "$failed" -eq 0 ] || exit 1

labels=()
for r in "${order[@]}"; do
    for s in "${runs[@]}"; do
        [ "$s" = "$r" ] || continue
        for sd in "${seeds[@]}"; do labels+=("$r=$out/$(job "$r" "$sd")"); done
    done
done
python3 scripts/plot_curves.py "${labels[@]}" -o "$out/curves_$arch.png" --title "$arch ($model), $steps steps" | tee "$out/table_$arch.md"
