#!/usr/bin/env bash
# One device call for issue 7's curves: build, tokenize the offline English mix (carried as
# shared/data/english_tech.txt.xz, with shared/data/gpt2.tiktoken), run
# scripts/reproduce_curves.sh for one model family on all GPUs, and with TABLE1=1 (gpt2) measure
# issue 5's Table 1 on the fp4 run's final checkpoint with the CPU trainer (--quant-stats, one
# batch of 2 x 1024 val tokens, no update: ~65 s on 16 cores; it also logs occ_shape). Plots and
# tables under $OUT, with archives of the logs and main.jsonl files; the checkpoints stay on the
# device.
#     bash dev/curves.sh gpt2|llama STEPS [RUN...]
# The environment passes through to reproduce_curves.sh (SEEDS, VAL_STEPS, B, ...).
set -u
out=${OUT:-out/device}
arch=$1 steps=$2
shift 2
mkdir -p "$out"
make -j16 train_gpt2 train_gpt2_fp4 > "$out/build.log" 2>&1 || { tail -20 "$out/build.log"; exit 1; }
t0=$(date +%s)
python3 dev/data/text_files.py shared/data/english_tech.txt.xz -o data/english --shard-size 10000000 > "$out/data.log" 2>&1 \
    || { tail -5 "$out/data.log"; exit 1; }
echo "tokenized in $(( $(date +%s) - t0 )) s: $(ls data/english | tr '\n' ' ')"
runs=runs/$arch
# the device returns few files: one archive of the logs, main.jsonl files, plot and table, remade
# every 30 s while the runs go, so that a call cut off at its time limit still returns the runs
# done by then (and the others' logs so far)
archive() { tar czf "$out/$arch.tar.tmp" "$runs"/*.log "$runs"/*.png "$runs"/*.md "$runs"/*/main.jsonl 2> /dev/null; mv "$out/$arch.tar.tmp" "$out/$arch.tar.gz"; }
( trap 'exit 0' TERM; while :; do sleep 30 & wait $!; archive; done ) &  # TERM: out between two archives
saver=$!
bash scripts/reproduce_curves.sh "$arch" "$runs" "$steps" "$@" 2>&1 | tee "$out/curves_$arch.log"
kill $saver
wait $saver
cp "$runs"/*.png "$runs"/*.md "$out/" 2> /dev/null
archive
if [ "${TABLE1:-0}" = 1 ]; then
    ckpt=$(ls "$runs"/fp4/model_$(printf %08d "$steps").bin "$runs"/fp4_s*/model_$(printf %08d "$steps").bin 2> /dev/null | head -n 1)
    t0=$(date +%s)
    OMP_NUM_THREADS=$(nproc) ./train_gpt2 -e "$ckpt" -r fp4 -i "data/english/english_tech_val_000000.bin" \
        -j "data/english/english_tech_val_000000.bin" -b 2 -t 1024 -x 1 -l 0 -v 0 -m 1 --quant-stats 1 -o runs/table1 \
        > "$out/table1.log" 2>&1 || { tail -5 "$out/table1.log"; exit 1; }
    tar czf "$out/table1.tar.gz" runs/table1/main.jsonl
    python3 scripts/quant_stats.py runs/table1 -o "$out/table1.png" --title "GPT-2 124M, fp4, $steps steps" | tee "$out/table1.md"
    echo "table 1 in $(( $(date +%s) - t0 )) s"
fi
