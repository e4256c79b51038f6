#!/usr/bin/env python3
"""`make bench`: our GPU trainer against the PyTorch baseline, in the same run, on the same
models and batches at T = 1024; prints a markdown table (tok/s, MFU, peak memory) and OCC's share
of the fp4 step.

    python3 dev/bench/bench.py [--steps 20] [--configs gpt2:d12:32 gpt2:d24:16 llama:d16,T=1024:8]
    python3 dev/bench/bench.py --ranks 4 [--configs ...] [--recipes ...]     (scaling, no PyTorch)

Our numbers: mean step time of the steps after the first 5 (main.jsonl). PyTorch's: 5 warmup
steps, then --steps timed. Peak memory: what each program allocated on the device (ours: every
cudaMalloc; PyTorch: max_memory_reserved of its caching allocator). With --ranks N: each config
and recipe on 1 GPU, then on N GPUs (scripts/run_multi_gpu.sh, the same batch per GPU), and the
scaling efficiency: tok/s per GPU at N over tok/s at 1.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
DATA = "data/tinyshakespeare/tiny_shakespeare_train.bin"


def run(cmd):
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return p.stdout


def ours(model, B, steps, recipe, ranks=1):
    """recipe: a name and extra flags, e.g. "fp4 --occ 0"; ranks > 1: data parallel on that many GPUs"""
    name, *extra = recipe.split()
    launch = ["./train_gpt2_fp4"] if ranks == 1 else ["bash", "scripts/run_multi_gpu.sh", str(ranks)]
    with tempfile.TemporaryDirectory() as out:
        log = run(launch + ["-e", model, "-b", str(B), "-t", "1024", "-x", str(steps), "-u", "2",
                            "-v", "0", "-m", "1", "-r", name, "-i", DATA, "-j", DATA, "-o", out] + extra)
        rows = [json.loads(l) for l in open(os.path.join(out, "main.jsonl")) if '"train_loss"' in l]
    ms = sum(r["ms"] for r in rows[5:]) / len(rows[5:])
    mfu = float(re.findall(r"MFU ([0-9.]+)%", log)[-1])
    peak = float(re.search(r"peak GPU memory ([0-9]+) MiB", log).group(1))
    return ms, ranks * B * 1024 / (ms / 1e3), mfu, peak


def pytorch(model, B, steps):
    out = run([sys.executable, "dev/bench/pytorch_baseline.py", "--model", model, "-b", str(B), "-t", "1024",
               "--steps", str(steps)])
    m = re.search(r"([0-9.]+) ms/step, ([0-9]+) tok/s, MFU ([0-9.]+)%, peak ([0-9]+) MiB", out)
    return float(m.group(1)), float(m.group(2)), float(m.group(3)), float(m.group(4))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--configs", nargs="+", default=["gpt2:d12:32", "gpt2:d24:16", "llama:d16,T=1024:8"],
                    help="MODEL:BATCH")
    ap.add_argument("--recipes", nargs="+", default=["bf16", "fp8", "fp4 --occ 0", "fp4", "fp4 --occ-comp 2"],
                    help="recipes with their extra flags, one quoted argument each")
    ap.add_argument("--no-pytorch", action="store_true", help="our recipes only (quick comparisons between them)")
    ap.add_argument("--ranks", type=int, default=1, help="N > 1: scaling from 1 to N GPUs instead")
    a = ap.parse_args()
    if not os.path.exists(os.path.join(ROOT, DATA)):
        sys.exit(f"error: {DATA} missing (make data)")
    if a.ranks > 1:
        return scaling(a)
    rows = []
    for spec in a.configs:
        model, _, B = spec.rpartition(":")
        ref = None if a.no_pytorch else pytorch(model, int(B), a.steps)
        if ref:
            rows.append((model, B, "pytorch (compile, bf16 autocast)", ref, None))
        for r in a.recipes:
            res = ours(model, int(B), a.steps + 5, r)
            rows.append((model, B, f"train_gpt2_fp4 {r}", res, res[1] / ref[1] if ref else None))
        print(f"done {spec}: " + "; ".join(f"{w} {r[1]:,.0f} tok/s, {r[3]:,.0f} MiB" for m, _, w, r, _ in rows if m == model),
              file=sys.stderr, flush=True)
    print("| model | batch x 1024 | trainer | ms/step | tok/s | MFU | peak MiB | vs PyTorch | vs our bf16 |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = {}
    for model, B, who, (ms, tok, mfu, peak), rel in rows:
        if who.endswith(" bf16"):
            base[model] = tok
        vs = f"{tok / base[model]:.2f}x" if model in base and not who.endswith(" bf16") else ""
        print(f"| {model} | {B} | {who} | {ms:.1f} | {tok:,.0f} | {mfu:.1f}% | {peak:,.0f} | "
              f"{'' if rel is None else f'{rel:.2f}x'} | {vs} |")
    # OCC's cost (issue 5's bar: at most 10% of the fp4 step): each fp4 row that differs from
    # "fp4 --occ 0" only in OCC's flags, against it
    step = {(model, who.split(" ", 1)[1]): r[0] for model, _, who, r, _ in rows if who.startswith("train_gpt2_fp4 ")}
    comp = {"1": "exact compensation", "2": "compensation in the operand", "0": "clamp only"}
    for model, recipe in step:
        flags = recipe.split()
        opts = dict(zip(flags[1::2], flags[2::2]))
        if flags[0] != "fp4" or len(flags) % 2 == 0 or not set(opts) <= {"--occ-comp", "--occ-alpha"} or (model, "fp4 --occ 0") not in step:
            continue
        with_occ, without = step[model, recipe], step[model, "fp4 --occ 0"]
        print(f"\n{model}: OCC (alpha {opts.get('--occ-alpha', '0.99')}, {comp.get(opts.get('--occ-comp', '1'), '?')}) costs "
              f"{with_occ - without:.1f} ms a step, {(with_occ - without) / with_occ:.1%} of the `{recipe}` step "
              f"({with_occ / without - 1:+.1%} over fp4 --occ 0)")


def scaling(a):
    print(f"| model | batch x 1024 per GPU | recipe | 1 GPU tok/s | {a.ranks} GPUs tok/s | per GPU | efficiency | "
          f"peak MiB 1 / {a.ranks} |")
    print("|---|---|---|---|---|---|---|---|")
    for spec in a.configs:
        model, _, B = spec.rpartition(":")
        for r in a.recipes:
            one = ours(model, int(B), a.steps + 5, r)
            many = ours(model, int(B), a.steps + 5, r, a.ranks)
            per = many[1] / a.ranks
            print(f"| {model} | {B} | {r} | {one[1]:,.0f} | {many[1]:,.0f} | {per:,.0f} | {per / one[1]:.1%} | "
                  f"{one[3]:,.0f} / {many[3]:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
