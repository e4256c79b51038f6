#!/usr/bin/env python3
"""Train and val loss against tokens for several runs, in one PNG, and a table of final val loss
with the gap to the first run (the baseline, e.g. bf16 or fp32).

    python3 scripts/plot_curves.py out/gpt2_bf16 out/gpt2_fp4 ... -o curves.png [--title T]

Each run folder holds the trainer's main.jsonl (one JSON object per line: train rows carry
"train_loss", eval rows "val_loss", both "step" and "tokens"). A run is labelled by its folder
name, or by NAME=FOLDER.
"""
import argparse
import json
import os
import sys


def read_jsonl(folder):
    """the rows of a run's main.jsonl, in order (also used by quant_stats.py)"""
    path = os.path.join(folder, "main.jsonl")
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                sys.exit(f"error: {path}:{n}: not a JSON line")
    return rows


def read_log(folder):
    rows = read_jsonl(folder)
    train = [(r["tokens"], r["train_loss"]) for r in rows if "train_loss" in r]
    val = [(r["tokens"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not train and not val:
        sys.exit(f"error: {os.path.join(folder, 'main.jsonl')}: no loss rows")
    return train, val


def smooth(ys, alpha=0.9):
    """Exponential moving average with bias correction (the first points are not pulled to 0)."""
    out, avg = [], 0.0
    for i, y in enumerate(ys):
        avg = alpha * avg + (1 - alpha) * y
        out.append(avg / (1 - alpha ** (i + 1)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders (or NAME=FOLDER); the first is the baseline")
    ap.add_argument("-o", "--out", default="curves.png")
    ap.add_argument("--title", default="")
    a = ap.parse_args()

    runs = []
    for spec in a.runs:
        name, _, folder = spec.rpartition("=") if "=" in spec else (os.path.basename(spec.rstrip("/")), "", spec)
        runs.append((name, *read_log(folder)))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for name, train, val in runs:
        if train:
            line, = ax1.plot([t for t, _ in train], smooth([l for _, l in train]), label=name, lw=1.2)
            color = line.get_color()
        else:
            color = None
        if val:
            ax2.plot([t for t, _ in val], [l for _, l in val], "o-", ms=3, label=name, color=color)
    for ax, what in ((ax1, "train loss (EMA 0.9)"), (ax2, "val loss")):
        ax.set_xlabel("tokens")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend()
    if a.title:
        fig.suptitle(a.title)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)

    base = runs[0][2][-1][1] if runs[0][2] else None
    print("| run | tokens | final val loss | gap to %s |" % runs[0][0])
    print("|---|---|---|---|")
    for name, train, val in runs:
        if not val:
            print(f"| {name} | - | - | - |")
            continue
        tok, loss = val[-1]
        gap = f"{100 * (loss - base) / base:+.2f}%" if base else "-"
        print(f"| {name} | {tok:,} | {loss:.4f} | {gap} |")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
