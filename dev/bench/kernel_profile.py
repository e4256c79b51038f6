#!/usr/bin/env python3
"""Per-kernel GPU time of training steps, from Nsight Compute (no nsys on our machines).

    python3 dev/bench/kernel_profile.py -e gpt2:d12 -b 32 [-r bf16] [--steps 2] [trainer flags, e.g. --occ 0]
    python3 dev/bench/kernel_profile.py -e llama:d16 -b 8 -r fp4 --detail 'codes_kernel<.int.5, .int.1' [--skip N]
    python3 dev/bench/kernel_profile.py -e gpt2:d12 -b 32 -r fp4 --only occ_rows   (those kernels alone: quicker)

Runs ./train_gpt2_fp4 for a few steps under `ncu --clock-control none`, times every kernel
launch of the last `--steps` steps (each launch replayed alone, so the sum is an upper bound on
the step's GPU time: no overlap, cold caches), and prints a table per kernel name: total ms per
step, share, launches per step.
"""
import argparse
import collections
import csv
import io
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
DATA = "data/tinyshakespeare/tiny_shakespeare_train.bin"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-e", default="gpt2:d12")
    ap.add_argument("-b", type=int, default=32)
    ap.add_argument("-t", type=int, default=1024)
    ap.add_argument("-r", default="bf16")
    ap.add_argument("--steps", type=int, default=2, help="steps to time (after two warmup steps)")
    ap.add_argument("--ncu", default="ncu")
    ap.add_argument("--bin", default="./train_gpt2_fp4", help="the trainer to run (a variant's build)")
    ap.add_argument("--csv", help="also keep ncu's raw CSV here")
    ap.add_argument("--detail", metavar="REGEX", help="instead: ncu's full report (stalls, memory, source counters) of "
                    "--count launches of the kernels whose demangled name matches; ncu writes them as "
                    "'codes_kernel<(int)2, (int)0, (int)1>' (match the parentheses with .)")
    ap.add_argument("--only", metavar="REGEX", help="time only the kernels whose demangled name matches, written as for "
                    "--detail (and the two that mark the steps); the total is then theirs")
    ap.add_argument("--skip", type=int, default=0, help="with --detail: matching launches to skip first")
    ap.add_argument("--count", type=int, default=1, help="with --detail: launches to report")
    a, extra = ap.parse_known_args()
    cmd = [a.bin, "-e", a.e, "-b", str(a.b), "-t", str(a.t), "-x", str(2 + a.steps), "-v", "0",
           "-m", "1", "-r", a.r, "-i", DATA, "-j", DATA] + extra
    if a.detail:
        prof = subprocess.run([a.ncu, "--set", "full", "--kernel-name-base", "demangled", "-k", f"regex:{a.detail}",
                               "--launch-skip", str(a.skip), "--launch-count", str(a.count)] + cmd, cwd=ROOT, capture_output=True, text=True)
        if prof.returncode != 0 or "Section:" not in prof.stdout:
            sys.exit(f"error: ncu failed or matched no launch:\n{prof.stdout[-3000:]}{prof.stderr[-3000:]}")
        print(prof.stdout[prof.stdout.index("==PROF=="):])
        return
    # the step boundaries: the classifier runs once per training micro-step (eval runs after the last)
    only = ["--kernel-name-base", "demangled", "-k", f"regex:({a.only}|classifier|encoder_forward)"] if a.only else []
    prof = subprocess.run([a.ncu, "--clock-control", "none", "--metrics", "gpu__time_duration.sum", "--csv",
                           "--print-units", "base"] + only + cmd, cwd=ROOT, capture_output=True, text=True)
    if prof.returncode != 0:
        sys.exit(f"error: ncu failed:\n{prof.stdout[-3000:]}{prof.stderr[-3000:]}")
    text = prof.stdout[prof.stdout.index('"ID"'):]
    if a.csv:
        open(a.csv, "w").write(text)
    launches = [(r["Kernel Name"], float(r["Metric Value"].replace(",", ""))) for r in csv.DictReader(io.StringIO(text))
                if r["Metric Name"] == "gpu__time_duration.sum"]
    # (ncu writes a template's instance as "void classifier_kernel<7>(...)")
    marks = [i for i, (name, _) in enumerate(launches) if name.removeprefix("void ").startswith("classifier")]
    # steps 3 .. 2+steps: from the classifier of step 3 to the classifier after the last timed step
    lo, hi = marks[2], marks[2 + a.steps] if len(marks) > 2 + a.steps else len(launches)
    # a step starts at its forward: move the window back to the first kernel after step 2's update
    first = [i for i, (name, _) in enumerate(launches) if name.removeprefix("void ").startswith("encoder_forward")]
    lo = max(i for i in first if i < lo)
    hi = max(i for i in first if i < hi) if hi < len(launches) else hi
    tot = collections.defaultdict(float)
    cnt = collections.Counter()
    for name, ns in launches[lo:hi]:
        key = name.split("(")[0][:70]
        tot[key] += ns / 1e6 / a.steps
        cnt[key] += 1
    total = sum(tot.values())
    print(f"{a.e} B={a.b} T={a.t} recipe {a.r}: {total:.2f} ms of kernel time per step, {(hi - lo) // a.steps} launches")
    print(f"| kernel | ms/step | share | launches/step |\n|---|---|---|---|")
    for k, v in sorted(tot.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {v:.3f} | {100 * v / total:.1f}% | {cnt[k] // a.steps} |")


if __name__ == "__main__":
    main()
