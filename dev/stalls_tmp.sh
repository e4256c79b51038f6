# one-off: warp stall breakdowns of a few kernels (raw WarpStateStats), gpt2:d12 B=32 fp4
set -u
make -j16 train_gpt2_fp4 > $OUT/build.log 2>&1 || { tail -20 $OUT/build.log; exit 1; }
python3 dev/data/tinyshakespeare.py > /dev/null
D=data/tinyshakespeare/tiny_shakespeare_train.bin
i=0
for spec in "grad_reduce_kernel<.int.0>@2" "grad_reduce_kernel<.int.4>@0" "codes_kernel<.int.0, .int.1, .int.0>@0" "occ_rows_kernel<.int.2>@0" "codes_kernel<.int.0, .int.0, .int.0>@0"; do
  IFS=@ read -r re skip <<< "$spec"; i=$((i+1))
  ncu --section WarpStateStats --section LaunchStats --section SpeedOfLight --page raw --kernel-name-base demangled -k "regex:$re" --launch-skip $skip --launch-count 1 \
    ./train_gpt2_fp4 -e gpt2:d12 -b 32 -t 1024 -x 3 -v 0 -m 1 -r fp4 -i $D -j $D > $OUT/stall_$i.txt 2>&1
  echo "== $re"; grep -E "gpu__time_duration.sum |issue_stalled_[a-z_]+_per_issue_active.ratio |launch__grid_size |launch__block_size |launch__registers_per_thread " $OUT/stall_$i.txt | awk '/stalled/ && $NF+0 < 0.3 {next} {print $1, $(NF)}' | head -30
done
