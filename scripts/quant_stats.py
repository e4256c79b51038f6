#!/usr/bin/env python3
"""The quantization telemetry of a run (`--quant-stats N` rows of its main.jsonl) as a plot and,
for one step, the activation table of Wang et al.'s Table 1 (no clamp; clamp 0.999; clamp and
compensation at 0.999 / 0.99 / 0.97), averaged over the layers' linears whose activations are
4-bit, and where OCC's outliers sit (the CPU trainer's logs; the GPU trainer logs the rest).

    python3 scripts/quant_stats.py OUT_DIR [-o quant_stats.png] [--step S]

The plot, per linear: the SNR of each operand (x: activation as the GEMM sees it, w: weight,
g: output gradient), the fraction of activations OCC clamped, and the weight-gradient norm after
DGE over the one before; against the step (means over the layers) when several steps were
logged, against the layer when one was (a checkpoint measured once).
"""
import argparse
import os
import sys
from collections import defaultdict

from plot_curves import read_jsonl

SETTINGS = ["no clamp", "clamp 0.999", "clamp+comp 0.999", "clamp+comp 0.99", "clamp+comp 0.97", "clamp+operand 0.99"]
FOUR_BIT = {"e2m1", "e1m2", "e3m0"}


def read_rows(folder):
    rows = [(r["step"], r["quant"]) for r in read_jsonl(folder) if "quant" in r]
    if not rows:
        sys.exit(f"error: {os.path.join(folder, 'main.jsonl')}: no quantization rows (run with --quant-stats N)")
    return rows


def table(rows, step):
    """markdown of the activation table at `step`, over the 4-bit linears (all if there are none);
    None where the trainer did not measure it (the GPU trainer leaves it to the CPU trainer)"""
    at = [q for s, q in rows if s == step and "x_table" in q]
    if not at:
        return None
    pick = [q for q in at if q["x_format"] in FOUR_BIT] or at
    fmt = "4-bit" if pick is not at or all(q["x_format"] in FOUR_BIT for q in at) else pick[0]["x_format"]
    lines = [f"Activations at step {step}: mean over {len(pick)} linears x layers ({fmt} activations)", "",
             "| setting | cosine similarity | MSE | SNR (dB) |", "|---|---|---|---|"]
    for name in SETTINGS:
        cos = sum(q["x_table"][name]["cos"] for q in pick) / len(pick)
        mse = sum(q["x_table"][name]["mse"] for q in pick) / len(pick)
        snr = sum(q["x_table"][name]["snr_db"] for q in pick) / len(pick)
        lines.append(f"| {name} | {cos:.4f} | {mse:.3e} | {snr:.2f} |")
    clamped = sum(q["clamped"] for q in pick) / len(pick)
    lines.append("")
    lines.append(f"The run's own setting: mean SNR {sum(q['x']['snr_db'] for q in pick) / len(pick):.2f} dB, "
                 f"{100 * clamped:.3f}% of the entries clamped.")
    shaped = [q for q in pick if "occ_shape" in q]
    if shaped:
        lines += ["", "Where the outliers sit, per linear (mean over the layers): the share in the busiest 1% of the "
                  "columns, the columns holding any, and the distinct columns per 64 rows over the outliers there", "",
                  "| linear | busiest 1% of columns | columns with any | distinct / entries per 64 rows |", "|---|---|---|---|"]
        for lin in sorted({q["linear"] for q in shaped}):
            sh = [q["occ_shape"] for q in shaped if q["linear"] == lin]
            mean = {k: sum(x[k] for x in sh) / len(sh) for k in ("top1", "cols", "tile64")}
            lines.append(f"| {lin} | {100 * mean['top1']:.1f}% | {100 * mean['cols']:.1f}% | {mean['tile64']:.3f} |")
    return "\n".join(lines)


def plot(rows, out, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    per_layer = len({step for step, _ in rows}) == 1
    by = defaultdict(lambda: defaultdict(list))  # (linear, what) -> x (step or layer) -> values
    for step, q in rows:
        x = q["layer"] if per_layer else step
        for op in ("x", "w", "g"):
            by[(q["linear"], op)][x].append(q[op]["snr_db"])
        by[(q["linear"], "clamped")][x].append(100 * q["clamped"])
        if q["dw_raw"] > 0:
            by[(q["linear"], "dge")][x].append(q["dw_dge"] / q["dw_raw"])
    panels = [("x", "activation SNR (dB)"), ("w", "weight SNR (dB)"), ("g", "gradient SNR (dB)"),
              ("clamped", "activations clamped (%)"), ("dge", "|dW| after DGE / before")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8))
    linears = sorted({lin for lin, _ in by}, key=["qkv", "attproj", "fc", "fcproj"].index)
    for ax, (what, label) in zip(axes, panels):
        for lin in linears:
            series = by.get((lin, what))
            if not series:
                continue
            xs = sorted(series)
            ax.plot(xs, [sum(series[x]) / len(series[x]) for x in xs], "o-", ms=3, label=lin)
        ax.set_xlabel("layer" if per_layer else "step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="the run's output folder (-o), holding main.jsonl")
    ap.add_argument("-o", "--out", default="quant_stats.png")
    ap.add_argument("--step", type=int, default=None, help="the table's step (default: the last logged)")
    ap.add_argument("--title", default="")
    a = ap.parse_args()
    rows = read_rows(a.run)
    steps = sorted({s for s, _ in rows})
    step = steps[-1] if a.step is None else a.step
    if step not in steps:
        sys.exit(f"error: step {step} has no quantization rows (logged: {', '.join(map(str, steps))})")
    t = table(rows, step)
    print(t or f"step {step}: no Table 1 settings in this log (the GPU trainer's); the CPU trainer measures them on a "
               "checkpoint: ./train_gpt2 -e MODEL.bin -r fp4 -x 1 -l 0 --quant-stats 1 ...")
    plot(rows, a.out, a.title)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
