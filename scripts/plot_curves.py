#!/usr/bin/env python3
"""Train and val loss against tokens for several runs, in one PNG, and a table of final val loss
with the gap to the first run (the baseline, e.g. bf16 or fp32).

    python3 scripts/plot_curves.py out/gpt2_bf16 out/gpt2_fp4 ... -o curves.png [--title T]

Each run folder holds the trainer's main.jsonl (one JSON object per line: train rows carry
"train_loss", eval rows "val_loss", both "step" and "tokens"). A run is labelled by its folder
name, or by NAME=FOLDER. Folders given the same NAME are seeds of one run: their mean is drawn
(val: with the band from the lowest to the highest seed), and the table gives each seed's final
val loss and the gap to the baseline seed by seed (the i-th folder of a name against the
baseline's i-th: the same initialization), as the mean and the range over the seeds.
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


def smooth_curve(points):
    return list(zip([t for t, _ in points], smooth([l for _, l in points])))


def mean_curve(curves):
    """the pointwise mean of curves [(tokens, loss)] over their common length, and min, max"""
    n = min(map(len, curves))
    pts = [[c[i][1] for c in curves] for i in range(n)]
    return [curves[0][i][0] for i in range(n)], [sum(p) / len(p) for p in pts], [min(p) for p in pts], [max(p) for p in pts]


def table(groups):
    """markdown: final val loss per run (and per seed) and the gap to the first run"""
    base = groups[0][1]
    seeds = max(len(runs) for _, runs in groups) > 1
    head = f"| run | tokens | final val loss | gap to {groups[0][0]} |"
    if seeds:
        head = f"| run | seeds | tokens | final val loss, mean (per seed) | gap to {groups[0][0]}, mean (range) |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for name, runs in groups:
        finals = [val[-1] for _, val in runs if val]
        if not finals:
            lines.append(f"| {name} |" + " - |" * (head.count("|") - 2))
            continue
        gaps = [100 * (loss - b[1][-1][1]) / b[1][-1][1] for (tok, loss), b in zip(finals, base) if b[1]]
        mean = sum(loss for _, loss in finals) / len(finals)
        if not seeds:
            gap = f"{gaps[0]:+.2f}%" if gaps else "-"
            lines.append(f"| {name} | {finals[0][0]:,} | {mean:.4f} | {gap} |")
            continue
        gap = f"{sum(gaps) / len(gaps):+.2f}% ({min(gaps):+.2f} .. {max(gaps):+.2f})" if gaps else "-"
        per = ", ".join(f"{loss:.4f}" for _, loss in finals)
        lines.append(f"| {name} | {len(finals)} | {finals[0][0]:,} | {mean:.4f} ({per}) | {gap} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders (or NAME=FOLDER); the first is the baseline")
    ap.add_argument("-o", "--out", default="curves.png")
    ap.add_argument("--title", default="")
    a = ap.parse_args()

    groups = {}  # name -> [(train, val)], in the order given
    for spec in a.runs:
        name, _, folder = spec.rpartition("=") if "=" in spec else (os.path.basename(spec.rstrip("/")), "", spec)
        groups.setdefault(name, []).append(read_log(folder))
    groups = list(groups.items())

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for name, runs in groups:
        label = name if len(runs) == 1 else f"{name} ({len(runs)} seeds)"
        color = None
        trains = [smooth_curve(train) for train, _ in runs if train]
        if trains:
            tok, mean, _, _ = mean_curve(trains)
            color = ax1.plot(tok, mean, label=label, lw=1.2)[0].get_color()
        vals = [val for _, val in runs if val]
        if vals:
            tok, mean, lo, hi = mean_curve(vals)
            color = ax2.plot(tok, mean, "o-", ms=3, label=label, color=color)[0].get_color()
            if len(vals) > 1:
                ax2.fill_between(tok, lo, hi, color=color, alpha=0.15)
    for ax, what in ((ax1, "train loss (EMA 0.9)"), (ax2, "val loss")):
        ax.set_xlabel("tokens")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend()
    if a.title:
        fig.suptitle(a.title)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(table(groups))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
