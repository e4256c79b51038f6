#!/usr/bin/env python3
"""dev/bench/timeline.py's accounting on a trace made by hand (the format cupti_trace.c writes):
two steps, a kernel beside another on a second stream, idle gaps, the host's calls. Every number
below is worked out from the intervals; the test fails on any other."""
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "dev", "bench"))
import timeline  # noqa: E402

# kind, start, end (ns), stream or thread, correlation id, name
TRACE = """R\t0\t5\t1\t1\tcudaLaunchKernel
K\t10\t100\t7\t1\tmark
R\t6\t50\t1\t2\tcudaLaunchKernel
K\t100\t300\t7\t2\tgemm
R\t51\t60\t1\t3\tcuLaunchKernelEx
K\t200\t400\t14\t3\twgrad
K\t450\t500\t7\t4\tquant
R\t900\t905\t1\t5\tcudaLaunchKernel
K\t1010\t1100\t7\t5\tmark
S\t1100\t1900\t7\t6\tmemset 8 bytes
R\t1950\t1960\t1\t7\tcudaLaunchKernel
K\t2010\t2100\t7\t7\tmark
"""

failed = passed = 0


def check(what, got, want):
    global failed, passed
    ok = abs(got - want) < 1e-9
    failed += not ok
    passed += ok
    print(f"{'ok  ' if ok else 'FAIL'} {what}: {got} (want {want})")


with tempfile.NamedTemporaryFile("w", suffix=".tsv", delete=False) as f:
    f.write(TRACE)
recs, calls = timeline.read_trace(f.name)
os.remove(f.name)
t = timeline.analyse(recs, calls, 0, "mark")
check("steps", t["n"], 2)
check("wall", t["wall"], 2000)  # 10 -> 1010 -> 2010
# step 1: mark 10-100, gemm 100-300, wgrad 200-400 beside it, quant 450-500; step 2: mark 1010-1100, memset 1100-1900
check("busy", t["busy"], 390 + 50 + 890)  # 10-400, 450-500; 1010-1900
check("gemm's share", t["share"]["gemm"], 100 + 50)  # alone 100-200, beside wgrad 200-300
check("wgrad's share", t["share"]["wgrad"], 50 + 100)
check("gemm's duration", t["total"]["gemm"], 200)
check("stream 14", t["per_stream"][14], 200)
check("marks a step", t["count"]["mark"] / t["n"], 1)
gaps = sorted(g[0] for g in t["gaps"])
check("gaps", len(gaps), 3)  # 400-450, 500-1010, 1900-2010
check("gaps' sum", sum(gaps), t["wall"] - t["busy"])
check("largest gap", gaps[-1], 510)
worst = max(t["gaps"])
check("the largest gap follows quant, ends the step", worst[1] == "quant" and worst[2] == "(next step)", True)
h = t["host"]
check("host span", h["span"], 1950)  # the first mark's call at 0, the last at 1950
check("host inside calls", h["covered"], 5 + 44 + 9 + 5)  # the last mark's call starts at the span's end
check("launches with a lead", len(h["leads"]), 4)  # calls ending in [0, 1950): 1, 2, 3, 5 (4 and 6 have none)
check("leads", h["leads"] == [5, 50, 105, 140], True)  # mark 5 -> 10, gemm 50 -> 100, mark 905 -> 1010, wgrad 60 -> 200
print(f"timeline: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
