#!/usr/bin/env python3
"""Where a training step's wall time goes, from a CUPTI trace of the run (dev/bench/cupti_trace.c).

    make dev/bench/libcupti_trace.so
    python3 dev/bench/timeline.py -e gpt2:d12 -b 32 -r fp4 --occ 0        (runs the trainer, traced)
    python3 dev/bench/timeline.py --trace trace.tsv                           (an existing trace)

kernel_profile.py replays each launch alone (what a kernel costs); this reads the run as it ran:
per step, the wall (from one encoder_forward launch to the next), the time the GPU had nothing
running (idle, with the largest gaps and the launches on either side), each stream's busy time,
and per kernel name its summed duration beside its share of the wall: each instant of the step
divided equally among the launches running then (so a kernel beside another counts half). The
host side: how long it took to queue a step, its time inside CUDA calls by name, and how far
ahead of the GPU it ran (a launch's lead: from the end of its call to the start of its work; near
zero, the GPU waits for the host).
"""
import argparse
import collections
import os
import shutil
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
DATA = "data/tinyshakespeare/tiny_shakespeare_train.bin"
LIB = os.path.join(ROOT, "dev", "bench", "libcupti_trace.so")


def demangle(names):
    if not shutil.which("c++filt"):
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.split("\n")
    return dict(zip(names, out))


def short(name, width=90):
    return name if len(name) <= width else name[:width - 3] + "..."


def read_trace(path):
    """GPU records (start, end, stream, name, correlation) sorted by start, and the host's calls by correlation id"""
    gpu, calls = [], {}
    for line in open(path):
        kind, start, end, stream, corr, name = line.rstrip("\n").split("\t", 5)
        if kind in "RD":
            calls[int(corr)] = (int(start), int(end), name)
        else:
            gpu.append((int(start), int(end), int(stream), name, int(corr)))
    if not gpu:
        sys.exit(f"error: {path} has no GPU records (did the program start CUDA?)")
    names = demangle(sorted({r[3] for r in gpu}))
    return sorted((s, e, st, names.get(n, n), c) for s, e, st, n, c in gpu), calls


def host_side(marks, recs, calls):
    """the host's part of the steps whose marker launches have these correlation ids (None without calls)"""
    h = [calls[c][0] for c in marks if c in calls]
    if len(h) < 2:
        return None
    h0, h1 = h[0], h[-1]
    covered, last, by_name = 0, h0, collections.Counter()
    for s, e, name in sorted((s, e, name) for s, e, name in calls.values() if s < h1 and e > h0):
        by_name[name] += min(e, h1) - max(s, h0)
        s, e = max(s, last), min(e, h1)
        if e > s:
            covered += e - s
            last = e
    leads = sorted(r[0] - calls[r[4]][1] for r in recs if r[4] in calls and h0 <= calls[r[4]][1] < h1)
    return {"span": h1 - h0, "covered": covered, "by_name": by_name, "leads": leads}


def analyse(recs, calls, skip, marker):
    """sums over the steps after skip, in ns: wall, busy, per stream, per kernel name (share, total,
    count), the idle gaps (length, what ended before, what started after), and the host's part"""
    marks = [(r[0], r[4]) for r in recs if marker in r[3]]
    if len(marks) < skip + 2:
        sys.exit(f"error: {len(marks)} launches of {marker}: need at least {skip + 2} (run more steps)")
    starts = [t for t, c in marks]
    steps = list(zip(starts[skip:-1], starts[skip + 1:]))
    t = {"n": len(steps), "wall": 0, "busy": 0, "share": collections.Counter(), "total": collections.Counter(),
         "count": collections.Counter(), "per_stream": collections.Counter(), "gaps": []}
    for t0, t1 in steps:
        t["wall"] += t1 - t0
        inside = [r for r in recs if r[1] > t0 and r[0] < t1]
        for s, e, st, name, corr in inside:
            d = min(e, t1) - max(s, t0)
            t["total"][name] += d; t["count"][name] += 1; t["per_stream"][st] += d
        # sweep: each elementary interval's length divided among the launches running in it
        events = sorted([(max(r[0], t0), 1, i) for i, r in enumerate(inside)] + [(min(r[1], t1), -1, i) for i, r in enumerate(inside)])
        active, last, last_end = set(), t0, None
        for when, kind, i in events:
            if when > last:
                if active:
                    t["busy"] += when - last
                    for j in active: t["share"][inside[j][3]] += (when - last) / len(active)
                else:
                    t["gaps"].append((when - last, last_end, inside[i][3]))
            last = max(last, when)
            if kind == 1:
                active.add(i)
            else:
                active.discard(i)
                last_end = inside[i][3]
        if last < t1: t["gaps"].append((t1 - last, last_end, "(next step)"))
    t["host"] = host_side([c for _, c in marks[skip:]], recs, calls)
    return t


def report(t):
    n = t["n"]
    ms = lambda ns: ns / n / 1e6
    print(f"{n} steps: wall {ms(t['wall']):.3f} ms a step, GPU busy {ms(t['busy']):.3f}, idle {ms(t['wall'] - t['busy']):.3f}; "
          f"kernel time summed {ms(sum(t['total'].values())):.3f}")
    print("streams (busy ms a step): " + ", ".join(f"{st}: {ms(v):.3f}" for st, v in sorted(t["per_stream"].items())))
    print("\nlargest idle gaps (us, over all steps), after -> before:")
    for d, a, b in sorted(t["gaps"], key=lambda g: -g[0])[:12]:
        print(f"  {d / 1e3:8.1f}  {short(str(a), 60)} -> {short(b, 60)}")
    small = [g[0] for g in t["gaps"] if g[0] < 1e4]
    print(f"  gaps under 10 us: {len(small) / n:.0f} a step, {ms(sum(small)):.3f} ms a step")
    h = t["host"]
    if h is None:
        print("\nhost: no CUDA calls in the trace")
    else:
        leads = h["leads"]
        q = lambda f: leads[min(len(leads) - 1, int(f * len(leads)))] / 1e3
        print(f"\nhost: {ms(h['span']):.3f} ms a step between the marker's launches, {ms(h['covered']):.3f} of it inside CUDA "
              f"calls (nested driver calls counted once); launches' lead (us): 10% {q(0.1):.0f}, median {q(0.5):.0f}, 90% "
              f"{q(0.9):.0f}; {sum(1 for x in leads if x < 50e3) / n:.0f} launches a step led by under 50 us")
        print("CUDA calls, ms a step (nested ones in their callers' too): " +
              ", ".join(f"{name} {ms(v):.3f}" for name, v in h["by_name"].most_common(10)))
    print("\n| share of the wall (ms) | summed duration (ms) | launches | kernel |\n|---:|---:|---:|---|")
    for name, v in t["share"].most_common():
        print(f"| {ms(v):.3f} | {ms(t['total'][name]):.3f} | {t['count'][name] / n:.0f} | {short(name)} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", help="read this trace instead of running the trainer")
    ap.add_argument("--keep", help="with a run: keep its trace here")
    ap.add_argument("-e", default="gpt2:d12")
    ap.add_argument("-b", type=int, default=32)
    ap.add_argument("-t", type=int, default=1024)
    ap.add_argument("-r", default="bf16")
    ap.add_argument("--steps", type=int, default=5, help="steps to read (after --skip warmup steps)")
    ap.add_argument("--skip", type=int, default=3)
    ap.add_argument("--bin", default="./train_gpt2_fp4")
    ap.add_argument("--marker", default="encoder_forward", help="a kernel launched once a step, at its start")
    a, extra = ap.parse_known_args()
    path = a.trace
    if not path:
        if not os.path.exists(LIB):
            sys.exit("error: dev/bench/libcupti_trace.so not built (make dev/bench/libcupti_trace.so)")
        path = a.keep or os.path.join(ROOT, "timeline_trace.tsv")
        env = dict(os.environ, CUDA_INJECTION64_PATH=LIB, CUPTI_TRACE_OUT=path)
        cmd = [a.bin, "-e", a.e, "-b", str(a.b), "-t", str(a.t), "-x", str(a.skip + a.steps + 1), "-v", "0",
               "-m", "1", "-r", a.r, "-i", DATA, "-j", DATA] + extra
        run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"error: the trainer failed:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
    recs, calls = read_trace(path)
    if not a.trace and not a.keep:
        os.remove(path)
    report(analyse(recs, calls, a.skip, a.marker))


if __name__ == "__main__":
    main()
