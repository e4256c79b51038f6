#!/usr/bin/env bash
# Bad input must end in exactly one line "error: ..." on stderr and exit code 1: no crash, no
# sanitizer report, no partial run. Each case builds its broken file from a valid one.
set -u
cd "$(dirname "$0")/.."
bin=./train_gpt2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0

# a valid shard of n tokens < 512 (the tiny test model's vocabulary), via python's struct
shard() {  # path ntok [magic] [version] [header-ntok]
    python3 - "$@" <<'EOF'
import struct, sys
path, n = sys.argv[1], int(sys.argv[2])
magic = int(sys.argv[3]) if len(sys.argv) > 3 else 20240520
version = int(sys.argv[4]) if len(sys.argv) > 4 else 1
hn = int(sys.argv[5]) if len(sys.argv) > 5 else n
with open(path, "wb") as f:
    f.write(struct.pack("<256i", magic, version, hn, *([0] * 253)))
    f.write(struct.pack(f"<{n}H", *[(i * 7919) % 500 for i in range(n)]))
EOF
}

model="gpt2:L=1,C=32,H=2,T=16,V=512"
shard "$tmp/ok.bin" 4096
base=(-e "$model" -i "$tmp/ok.bin" -j "$tmp/ok.bin" -b 2 -t 16 -x 2 -v 0 -m 1 -z "$tmp/none")

# expect NAME PATTERN ARGS...: the run fails with one line matching PATTERN
expect() {
    local name=$1 pattern=$2
    shift 2
    "$bin" "$@" > "$tmp/out" 2> "$tmp/err"
    local rc=$? lines
    lines=$(wc -l < "$tmp/err")
    if [ "$rc" -eq 1 ] && [ "$lines" -eq 1 ] && grep -q "^error: .*$pattern" "$tmp/err"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL $name: exit $rc, $lines stderr line(s):"
        head -5 "$tmp/err"
    fi
}

# the valid setup runs, and writes a checkpoint the cases below break
"$bin" "${base[@]}" -o "$tmp/run" > "$tmp/out" 2>&1 && [ -f "$tmp/run/model_00000002.bin" ] \
    && passed=$((passed + 1)) || { failed=$((failed + 1)); echo "FAIL the valid run:"; tail -5 "$tmp/out"; }

# token shards
shard "$tmp/magic.bin" 4096 1234
expect "shard magic" "not a token shard" "${base[@]}" -i "$tmp/magic.bin"
shard "$tmp/version.bin" 4096 20240520 7
expect "shard version" "version 7" "${base[@]}" -i "$tmp/version.bin"
shard "$tmp/trunc.bin" 4096 20240520 1 5000
expect "truncated shard" "5000 tokens" "${base[@]}" -i "$tmp/trunc.bin"
head -c 100 "$tmp/ok.bin" > "$tmp/short.bin"
expect "shard shorter than its header" "truncated token shard" "${base[@]}" -j "$tmp/short.bin"
shard "$tmp/tiny.bin" 10
expect "shard too small for a batch" "too few" "${base[@]}" -i "$tmp/tiny.bin"
expect "token id outside the vocabulary" "outside the vocabulary" "${base[@]}" -e "gpt2:L=1,C=32,H=2,T=16,V=300"
expect "no shard matches" "no token shards" "${base[@]}" -i "$tmp/nothing_*.bin"

# checkpoints
ck="$tmp/run/model_00000002.bin"
python3 -c "import sys; d=bytearray(open(sys.argv[1],'rb').read()); d[0]^=1; open(sys.argv[2],'wb').write(d)" "$ck" "$tmp/ck_magic.bin"
expect "checkpoint magic" "not a model checkpoint" "${base[@]}" -e "$tmp/ck_magic.bin"
head -c 5000 "$ck" > "$tmp/ck_trunc.bin"
expect "truncated checkpoint" "file has 5000 bytes" "${base[@]}" -e "$tmp/ck_trunc.bin"
python3 -c "import sys,struct; d=bytearray(open(sys.argv[1],'rb').read()); d[36:40]=struct.pack('<i',3); open(sys.argv[2],'wb').write(d)" "$ck" "$tmp/ck_cfg.bin"
expect "checkpoint with an impossible config" "bad model configuration" "${base[@]}" -e "$tmp/ck_cfg.bin"
cp -r "$tmp/run" "$tmp/run2"
"$bin" -e "gpt2:L=1,C=64,H=2,T=16,V=512" -i "$tmp/ok.bin" -j "$tmp/ok.bin" -b 2 -t 16 -x 2 -v 0 -m 1 -z "$tmp/none" -o "$tmp/other" > /dev/null 2>&1
cp "$tmp/other/state_00000002.bin" "$tmp/run2/state_00000002.bin"
expect "optimizer state of another model" "state is for" "${base[@]}" -o "$tmp/run2" -y 1
mkdir -p "$tmp/empty"
expect "resume with no checkpoint" "no complete checkpoint" "${base[@]}" -o "$tmp/empty" -y 1

# tokenizer
printf 'abcd%.0s' $(seq 300) > "$tmp/tok_magic.bin"
expect "tokenizer magic" "not a tokenizer file" "${base[@]}" -z "$tmp/tok_magic.bin"
python3 -c "import struct; open('$tmp/tok_trunc.bin','wb').write(struct.pack('<256I',20240328,2,50257,50256,*([0]*252)) + bytes([3]) + b'ab')"
expect "truncated tokenizer" "truncated file" "${base[@]}" -z "$tmp/tok_trunc.bin"

# flags and configurations
expect "unknown flag" "unknown flag '-w'" "${base[@]}" -w 3
expect "flag without a value" "needs a value" "${base[@]}" -b
expect "malformed integer" "not an integer" "${base[@]}" -b 4x
expect "malformed number" "not a number" "${base[@]}" -l abc
expect "zero batch" "must be positive" "${base[@]}" -b 0
expect "total batch not a multiple" "multiple of" "${base[@]}" -d 100
expect "sequence longer than the model" "exceeds the model" "${base[@]}" -t 32
expect "unknown recipe" "unknown recipe" "${base[@]}" -r fp6
expect "unknown 4-bit layout" "unknown 4-bit layout" "${base[@]}" -r fp4 --fp4-format e2m2
expect "bad OCC alpha" "occ-alpha" "${base[@]}" --occ-alpha 1.5
expect "switch that is not 0 or 1" "take 0 or 1" "${base[@]}" --dge 2
expect "--occ-comp that is not 0, 1 or 2" "occ-comp takes" "${base[@]}" --occ-comp 3
expect "no val batches" "must be >= 1" "${base[@]}" -m 0
expect "negative interval" "must be >= 0" "${base[@]}" -v -5
expect "unknown architecture" "unknown architecture" "${base[@]}" -e "gpt3:d12"
expect "width not divisible by heads" "multiple of H" "${base[@]}" -e "gpt2:L=1,C=33,H=2,T=16"
expect "heads not divisible by kv heads" "divisible by KV" "${base[@]}" -e "llama:L=1,C=48,H=6,KV=4,T=16"
expect "unknown descriptor key" "unknown key 'Q'" "${base[@]}" -e "gpt2:L=1,C=32,H=2,Q=3"
expect "malformed descriptor value" "bad value for L" "${base[@]}" -e "gpt2:L=x,C=32,H=2,T=16"

# the GPU trainer's own switches, refused before it touches a GPU (so this runs on CPU-only
# machines too); skipped, and said so, where it is not built (make test-sanitize builds the C
# targets alone)
if [ -x ./train_gpt2_fp4 ]; then
    bin=./train_gpt2_fp4
    expect "GPU trainer: --own-gemm 2" "take 0 or 1" "${base[@]}" --own-gemm 2
    expect "GPU trainer: --deterministic 3" "take 0 or 1" "${base[@]}" --deterministic 3
    expect "GPU trainer: --wgrad-stream 2" "take 0 or 1" "${base[@]}" --wgrad-stream 2
    expect "GPU trainer: --fast-accum 2" "take 0 or 1" "${base[@]}" --fast-accum 2
    expect "GPU trainer: --nccl-timeout 0" "at least 1 second" "${base[@]}" --nccl-timeout 0
    expect "GPU trainer: unknown recipe" "unknown recipe" "${base[@]}" -r fp6
    bin=./train_gpt2
else
    echo "skipped: the GPU trainer's switches (./train_gpt2_fp4 is not built)"
fi

echo "badinput: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
