#!/usr/bin/env python3
"""Self-tests of dev/reference/reference.py against SPEC.md and RECIPE.md's check values.

    python dev/reference/test_reference.py
"""

import math
import os
import sys
import tempfile
import traceback

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as R  # noqa: E402

f32 = torch.float32
f64 = torch.float64


def t32(*v):
    return torch.tensor(v, dtype=f32)


def same(a, b):
    """Bitwise equal, signed zeros included."""
    a, b = a.float(), b.float()
    return torch.equal(a, b) and torch.equal(torch.signbit(a), torch.signbit(b))


# --- independent brute-force rounding: nearest representable, ties to the even code ----------

def fp8_magnitudes(fmt):
    """All finite magnitudes of an FP8 format from its bit fields, in code order."""
    mbits, emin, maxv = R.FP8[fmt]
    ebits = 7 - mbits
    bias = (1 << (ebits - 1)) - 1
    vals = []
    for code in range(1 << 7):
        e, m = code >> mbits, code & ((1 << mbits) - 1)
        v = (m / (1 << mbits)) * 2.0 ** (1 - bias) if e == 0 else \
            (1 + m / (1 << mbits)) * 2.0 ** (e - bias)
        if v > maxv:
            break
        vals.append(v)
    assert vals[-1] == maxv and 1 - bias == emin
    return np.array(vals)


def brute_round(x, mags):
    a = np.abs(x.astype(np.float64))
    out = np.empty_like(a)
    for n, v in enumerate(a):
        if v >= mags[-1]:
            out[n] = mags[-1]
            continue
        j = np.searchsorted(mags, v)  # mags[j-1] < v <= mags[j]
        if mags[j] == v:
            out[n] = v
            continue
        lo, hi = mags[j - 1], mags[j]
        dl, dh = v - lo, hi - v
        out[n] = lo if dl < dh else hi if dh < dl else (lo if (j - 1) % 2 == 0 else hi)
    return np.copysign(out, x)


def random_probe(mags, n=4000, seed=0):
    """Random values plus every representable value and every midpoint."""
    rng = np.random.default_rng(seed)
    mids = (mags[:-1] + mags[1:]) / 2
    x = np.concatenate([mags, mids, rng.uniform(0, mags[-1] * 1.2, n),
                        np.exp(rng.uniform(np.log(mags[1] / 4), np.log(mags[-1] * 4), n))])
    x = np.concatenate([x, -x]).astype(np.float32)
    return x


# --- tests ----------------------------------------------------------------------------------

def test_e2m1_ties():
    x = t32(0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, 7, -0.1, 0, -5, -0.75, 100, 6, 4.5)
    want = t32(0, 1, 1, 2, 2, 4, 4, 6, -0.0, 0, -4, -1, 6, 6, 4)
    assert same(R.round_grid4(x, "e2m1"), want), R.round_grid4(x, "e2m1")


def test_4bit_layouts_bruteforce():
    for lay in ("e2m1", "e1m2", "e3m0"):
        mags = np.array(R.GRID4[lay])
        x = random_probe(mags)
        got = R.round_grid4(torch.from_numpy(x), lay).numpy()
        want = brute_round(x, mags)
        assert np.array_equal(got, want) and np.array_equal(np.signbit(got), np.signbit(x)), lay


def test_e3m0_e1m2_ties():
    x = t32(0.125, 0.375, 0.75, 1.5, 3, 6, 12, 20)
    assert same(R.round_grid4(x, "e3m0"), t32(0, 0.5, 0.5, 2, 2, 8, 8, 16))
    x = t32(0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.25, 9)
    assert same(R.round_grid4(x, "e1m2"), t32(0, 1, 1, 2, 2, 3, 3, 3.5))


def test_e4m3_values():
    r = lambda *v: R.round_fp8(t32(*v), "e4m3")
    s = 2.0 ** -9
    assert same(r(448, 449, 1e6, -1e6, 464, 470), t32(448, 448, 448, -448, 448, 448))
    assert same(r(s, 1.4 * s, 0.5 * s, 1.5 * s, 0.4 * s, -0.4 * s),
                t32(s, s, 0, 2 * s, 0, -0.0))
    assert same(r(2 ** -6 + s, 2 ** -6 + s / 2, 1 + 1 / 16, 1 + 3 / 16),
                t32(2 ** -6 + s, 2 ** -6, 1, 1.25))


def test_e5m2_values():
    r = lambda *v: R.round_fp8(t32(*v), "e5m2")
    s = 2.0 ** -16
    assert same(r(57344, 60000, 61440, 1e9, -1e9), t32(57344, 57344, 57344, 57344, -57344))
    assert same(r(s, 0.5 * s, 1.5 * s, 2.5 * s, 2 ** -14 + s), t32(s, 0, 2 * s, 2 * s,
                                                                  2 ** -14 + s))


def test_fp8_bruteforce_and_torch():
    for fmt, tdt in (("e4m3", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2)):
        mags = fp8_magnitudes(fmt)
        x = random_probe(mags, seed=1)
        got = R.round_fp8(torch.from_numpy(x), fmt)
        assert np.array_equal(got.numpy(), brute_round(x, mags)), fmt
        # torch's cast agrees inside the range (it does not saturate, so compare there only)
        inr = torch.from_numpy(x).abs() <= float(mags[-1])
        xt = torch.from_numpy(x)[inr]
        assert same(got[inr], xt.to(tdt).float()), fmt


def test_bf16():
    x = t32(1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), 1 + 2 ** -8 + 2 ** -20, 3.0e38, 0.0)
    want = t32(1, 1 + 2 ** -6, -1, 1 + 2 ** -7, 2.9975332e38, 0)
    got = R.round_bf16(x)
    assert same(got[:4], want[:4]) and same(got[5:], want[5:]), got
    y = torch.randn(100000, dtype=f32) * torch.exp(torch.randn(100000) * 10)
    assert same(R.round_bf16(y), y.to(torch.bfloat16).float())


def test_quantize_rows_and_zero():
    x = torch.randn(5, 64, dtype=f32)
    x[2] = 0
    for fmt, gmax in (("e2m1", 6.0), ("e4m3", 448.0), ("e5m2", 57344.0)):
        xq, c, s = R.quantize(x, fmt, 1, "vector")
        assert s.shape == (5, 1) and torch.isfinite(xq).all()
        assert torch.equal(c.abs().amax(1)[[0, 1, 3, 4]], torch.full((4,), gmax))
        assert torch.equal(xq[2], torch.zeros(64)) and s[2, 0] == 0
        assert torch.equal(xq, c * s)
        assert torch.equal(s[:, 0], x.abs().amax(1) / gmax)
    _, c, s = R.quantize(x, "e2m1", 0, "vector")  # per column
    assert s.shape == (1, 64)
    _, c, s = R.quantize(x, "e2m1", 1, "tensor")
    assert s.shape == (1, 1) and c.abs().max() == 6


def test_dge_check_values():
    d = lambda *w: R.dge_derivative(t32(*w), "e2m1", 5.0)
    assert abs(float(d(6)) - 0.2) < 1e-6 and float(d(5)) == 3.0 and float(d(-5)) == 3.0
    assert abs(float(d(0)) - 0.2) < 1e-6
    got = R.dge_derivative(torch.linspace(-6, 6, 20, dtype=f32), "e2m1", 5.0)
    want = [0.2, 0.4446, 0.5819, 0.2186, 2.1088, 0.2709, 0.3097, 0.2709, 0.2416, 0.5819]
    assert np.allclose(got[:10].numpy(), want, atol=6e-5), got[:10]
    assert torch.allclose(got, got.flip(0), atol=1e-6)  # symmetric


def test_occ_count_k256():
    torch.manual_seed(1)
    x = torch.randn(64, 256, dtype=f32)
    xc, r = R.occ_clamp(x, float(np.float32(0.99)))
    n = (r != 0).sum(1)
    assert torch.equal(n, torch.full((64,), 6)), n  # pos 252.45 and 2.55: 3 above, 3 below
    assert torch.equal(r, (x - xc).to(torch.bfloat16).to(f32))  # the residual in BF16
    v, _ = x.sort(1)
    f_hi = float(np.float32(0.9900000095367432 * 255 - 252))
    q_hi = v[:, 252] + torch.tensor(f_hi, dtype=f32) * (v[:, 253] - v[:, 252])
    assert torch.equal(xc.amax(1), q_hi)
    # K = 64 (the fc input here): pos 62.37 and 0.63 -> 1 above, 1 below
    xc, r = R.occ_clamp(x[:, :64].contiguous(), float(np.float32(0.99)))
    assert torch.equal((r != 0).sum(1), torch.full((64,), 2))


def _fn(x, w, b, rc):
    x = x.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    b = b.clone().requires_grad_(True)
    y = R.QuantLinearFn.apply(x, w, b, rc)
    g = torch.randn_like(y)
    y.backward(g)
    return y.detach(), g, x.grad, w.grad, b.grad


def test_linear_folded_scales():
    """With an unquantized G the folded backward reduces to G Wq and G^T Xq."""
    torch.manual_seed(2)
    x, w, b = torch.randn(48, 64), torch.randn(32, 64) * 0.1, torch.randn(32)
    w[3] = 0  # a zero channel: scale 0, no NaN
    for fx in ("e4m3", "e2m1"):
        rc = R.LinearRecipe(fx, fx, "fp32")
        y, g, dx, dw, db = _fn(x, w, b, rc)
        xq = R.quantize(x, fx, 1, "vector")[0]
        wq = R.quantize(w, fx, 1, "vector")[0]
        assert torch.allclose(y, xq @ wq.t() + b, rtol=1e-5, atol=1e-5)
        assert torch.allclose(dx, g @ wq, rtol=1e-5, atol=1e-5)
        assert torch.allclose(dw, g.t() @ xq, rtol=1e-5, atol=1e-4)
        assert torch.allclose(db, g.sum(0)) and torch.isfinite(dw).all()


def test_linear_dge_occ():
    torch.manual_seed(3)
    x, w, b = torch.randn(48, 256), torch.randn(32, 256) * 0.1, torch.zeros(32)
    x[5, 7] = 40.0  # an outlier
    rc = R.LinearRecipe("e2m1", "e2m1", "fp32", dge_k=5.0, occ_alpha=float(np.float32(0.99)))
    y, g, dx, dw, db = _fn(x, w, b, rc)
    xc, r = R.occ_clamp(x, rc.occ_alpha)
    xq = R.quantize(xc, "e2m1", 1, "vector")[0]
    wq, cw, sw = R.quantize(w, "e2m1", 1, "vector")
    assert torch.allclose(y, xq @ wq.t() + r @ w.t(), rtol=1e-5, atol=1e-5)
    want = (g.t() @ xq) * R.dge_derivative(w / sw, "e2m1", 5.0) + g.t() @ r
    assert torch.allclose(dw, want, rtol=1e-5, atol=1e-4)
    # on the outlier's row, clamp + compensation halves the activation error of the plain cast
    y0 = x @ wq.t()
    y_nocc = R.quantize(x, "e2m1", 1, "vector")[0] @ wq.t()
    assert (y - y0)[5].norm() < 0.7 * (y_nocc - y0)[5].norm()


def test_linear_occ_operand():
    """OCC's compensation in the operand: the clamped entries' codes carry their excess in E4M3,
    the rest are the clamped row's codes; forward and wgrad both use them, DGE on all of dW."""
    torch.manual_seed(5)
    x, w, b = torch.randn(48, 256), torch.randn(32, 256) * 0.1, torch.zeros(32)
    x[5, 7] = 40.0
    rc = R.LinearRecipe("e2m1", "e2m1", "fp32", dge_k=5.0, occ_alpha=float(np.float32(0.99)), occ_operand=True)
    y, g, dx, dw, db = _fn(x, w, b, rc)
    xc, r = R.occ_clamp(x, rc.occ_alpha)
    _, cx, sx = R.quantize(xc, "e2m1", 1, "vector")
    cut = x != xc
    fold = R.round_fmt(cx + (x - xc) / sx, "e4m3")
    assert cut.sum() > 0 and torch.equal(fold[~cut], cx[~cut])  # E4M3 holds every E2M1 code
    xf = torch.where(cut, fold, cx) * sx
    assert (xf[5, 7] - 40.0).abs() <= 40.0 / 16  # the outlier within E4M3's half step
    wq, cw, sw = R.quantize(w, "e2m1", 1, "vector")
    assert torch.allclose(y, xf @ wq.t(), rtol=1e-5, atol=1e-5)
    want = (g.t() @ xf) * R.dge_derivative(w / sw, "e2m1", 5.0)
    assert torch.allclose(dw, want, rtol=1e-5, atol=1e-4)


def test_linear_quantized_grad():
    """With an 8-bit G the gradients stay close to the unquantized ones and are finite."""
    torch.manual_seed(4)
    x, w, b = torch.randn(64, 64), torch.randn(48, 64) * 0.1, torch.zeros(48)
    for fg in ("e4m3", "e5m2"):
        for scaling in ("vector", "tensor"):
            y, g, dx, dw, db = _fn(x, w, b, R.LinearRecipe("e4m3", "e4m3", fg, scaling))
            assert (dx - g @ w).norm() < 0.15 * (g @ w).norm(), (fg, scaling)
            assert (dw - g.t() @ x).norm() < 0.15 * (g.t() @ x).norm(), (fg, scaling)


def test_gradcheck_linear_fp32():
    torch.manual_seed(5)
    x = torch.randn(6, 5, dtype=f64, requires_grad=True)
    w = torch.randn(4, 5, dtype=f64, requires_grad=True)
    b = torch.randn(4, dtype=f64, requires_grad=True)
    rc = R.LinearRecipe("fp32", "fp32", "fp32")
    assert torch.autograd.gradcheck(lambda x, w, b: R.QuantLinearFn.apply(x, w, b, rc), (x, w, b))


def _tiny(arch):
    if arch == 1:
        return R.make_config(1, 300, 16, 2, 2, 2, 16, 64)
    return R.make_config(2, 300, 16, 2, 4, 2, 16, 24)


def test_model_finite_differences():
    """fp32 recipe in float64: autograd gradients of the whole model match central differences."""
    rng = np.random.default_rng(6)
    for arch in (1, 2):
        cfg = _tiny(arch)
        names = [s[0] for s in R.param_specs(cfg)]
        # random (not init) values so norms/biases have nonzero gradients everywhere
        P = {n: torch.tensor(a + rng.normal(0, 0.1, a.shape), dtype=f64, requires_grad=True)
             for n, a in zip(names, R.init_params(cfg, 7))}
        idx = torch.tensor(rng.integers(0, cfg.V, (2, 8)))
        tgt = torch.tensor(rng.integers(0, cfg.V, (2, 8)))
        rec = R.Recipe("fp32")
        _, loss = R.forward(P, cfg, rec, idx, tgt)
        loss.backward()
        with torch.no_grad():
            for n in names:
                p = P[n]
                flat = p.view(-1)
                picks = rng.choice(flat.numel(), 6, replace=False)
                if n in ("wte", "lmhead"):
                    picks[:3] = (idx.view(-1)[:3] * cfg.C).numpy()  # rows that matter
                for i in picks:
                    h, old = 1e-6, flat[i].item()
                    flat[i] = old + h
                    lp = R.forward(P, cfg, rec, idx, tgt)[1].item()
                    flat[i] = old - h
                    lm = R.forward(P, cfg, rec, idx, tgt)[1].item()
                    flat[i] = old
                    fd, ag = (lp - lm) / (2 * h), p.grad.view(-1)[i].item()
                    assert abs(fd - ag) < 1e-7 + 1e-5 * abs(ag), (arch, n, i, fd, ag)


def test_gqa_and_rope():
    torch.manual_seed(8)
    q, k, v = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    out = R.attention(q, k, v, 4, 2)
    for h in range(4):
        kv = h // 2
        s = q[0, h] @ k[0, kv].t() / math.sqrt(8)
        s = s.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf"))
        assert torch.allclose(out[0, h], torch.softmax(s, -1) @ v[0, kv], atol=1e-6)
    cos, sin = R.rope_table(6, 8, f64, "cpu")
    x = torch.randn(1, 1, 6, 8, dtype=f64)
    y = R.rope(x, cos, sin)
    assert torch.equal(y[..., 0, :], x[..., 0, :])  # position 0 is not rotated
    assert torch.allclose(y[..., 0::2] ** 2 + y[..., 1::2] ** 2, x[..., 0::2] ** 2 + x[..., 1::2] ** 2)
    # pair i at position 1 rotates by theta^(-2i/hd), counter-clockwise
    ang = 10000.0 ** (-2 * 1 / 8)
    x0, x1 = x[0, 0, 1, 2].item(), x[0, 0, 1, 3].item()
    want = (x0 * math.cos(ang) - x1 * math.sin(ang), x0 * math.sin(ang) + x1 * math.cos(ang))
    assert np.allclose(y[0, 0, 1, 2:4].numpy(), want, atol=1e-7)


def test_init_rng():
    mask = (1 << 64) - 1

    def sm(x):  # plain-int splitmix64, independent of the numpy version
        x = (x + 0x9E3779B97F4A7C15) & mask
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    seed, j = 1337, 4
    key = sm(seed ^ sm(j))
    got = R.init_normal(seed, j, 1000, 0.02)
    for i in (0, 1, 2, 517, 999):
        u1 = ((sm(key ^ sm(2 * i)) >> 40) + 1) * 2.0 ** -24
        u2 = ((sm(key ^ sm(2 * i + 1)) >> 40) + 1) * 2.0 ** -24
        want = np.float32(0.02 * math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2))
        assert got[i] == want, (i, got[i], want)
    u = R.uniform(np.array([0, mask], np.uint64))
    assert u[0] == 2.0 ** -24 and u[1] == 1.0


def test_init_layout():
    cfg = R.make_config(1, 50257, 64, 3, 4, 4, 64, 256)
    P = dict(zip([s[0] for s in R.param_specs(cfg)], R.init_params(cfg, 1337)))
    assert P["wte"].shape == (50304, 64) and not P["wte"][50257:].any()
    assert abs(P["wte"][:50257].std() - 0.02) < 2e-4 and abs(P["wte"].mean()) < 1e-4
    assert abs(P["attprojw"].std() - 0.02 / math.sqrt(6)) < 3e-4
    assert (P["ln1w"] == 1).all() and not P["qkvb"].any()
    # tensors are keyed by their index j, not their content: wpe differs from wte's start
    assert not np.array_equal(P["wpe"].ravel()[:100], P["wte"].ravel()[:100])
    C, F, L = 64, 256, 3
    per_layer = C + C + 3 * C * C + 3 * C + C * C + C + C + C + F * C + F + C * F + C
    assert sum(a.size for a in P.values()) == 50304 * C + 64 * C + L * per_layer + 2 * C


def test_file_roundtrip_and_corruption():
    cfg = R.make_config(2, 300, 16, 1, 4, 2, 16, 24)
    rec = R.Recipe("fp4", True, 5.0, True, float(np.float32(0.99)))
    opt = R.Optim(*(float(np.float32(v)) for v in (1e-3, 0.9, 0.95, 1e-8, 0.1, 1.0)))
    res = R.train(cfg, rec, opt, 1337, 2, 8, 3, f32, "cpu", log=lambda s: None)
    hdr = dict(arch=2, V=300, Vp=384, T=16, L=1, H=4, KV=2, C=16, F=24, B=2, Tb=8, recipe=3,
               dge=1, occ=1, layout=0, fp4_attn=0, scaling=0, grad_format=0, steps=3, seed=1337,
               rope_theta=1e4, norm_eps=1e-5, occ_alpha=0.99, dge_k=5.0, lr=1e-3, beta1=0.9,
               beta2=0.95, eps=1e-8, wd=0.1, clip=1.0)
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "ref.bin")
        R.write_ref(p, hdr, res)
        r = R.check_ref(p)
        assert np.array_equal(r["losses"], np.float32(res["losses"]))
        ids = R.sampled_ids(res["inputs"], res["targets"], 300, 384)
        assert ids[-1] == 383 and 299 in ids and 0 in ids
        lg = r["records"][0]
        assert np.array_equal(lg["values"], res["logits"].ravel()[lg["index"]])
        wte = r["records"][1]
        assert np.array_equal(wte["values"].reshape(-1, 16), res["grads"][0][ids])
        assert np.array_equal(r["records"][3]["values"], res["grads"][2])  # qkvw stored whole
        good = open(p, "rb").read()
        first_rec = 1024 + 4 * 2 * 16 + 4 * 2 * 3
        bad = {
            "truncated": good[:-4],
            "trailing": good + b"\0\0\0\0",
            "magic": b"\1" + good[1:],
            "nstored": good[:first_rec + 8] + np.int32(5).tobytes() + good[first_rec + 12:],
            "value": good[:-4] + np.float32(123.0).tobytes(),  # last record is whole: sum breaks
            "token": good[:1024] + np.int32(300).tobytes() + good[1028:],
        }
        for name, blob in bad.items():
            with open(p, "wb") as f:
                f.write(blob)
            try:
                R.check_ref(p)
            except R.RefFormatError:
                continue
            raise AssertionError(f"corruption {name!r} not caught")


def test_training_smoke():
    """Initial loss about ln V, padded rows/columns zero, loss going down in every recipe."""
    cfg = R.make_config(1, 300, 16, 1, 2, 2, 16, 64)
    opt = R.Optim(lr=1e-2)
    for name in ("fp32", "bf16", "fp8", "fp4"):
        fp4 = name == "fp4"
        rec = R.Recipe(name, fp4, 5.0, fp4, 0.99, fp4_attn=fp4)
        res = R.train(cfg, rec, opt, 1337, 2, 8, 5, f64 if name == "fp32" else f32, "cpu",
                      log=lambda s: None)
        assert abs(res["losses"][0] - math.log(300)) < 0.05, res["losses"][0]
        assert res["losses"][-1] < res["losses"][0] - 0.1, (name, res["losses"])
        assert not res["logits"][:, 300:].any() and not res["grads"][0][300:].any()


def main():
    tests = [(n, f) for n, f in globals().items() if n.startswith("test_") and callable(f)]
    passed = failed = 0
    for n, f in tests:
        try:
            f()
            passed += 1
            print(f"ok    {n}")
        except Exception:
            failed += 1
            print(f"FAIL  {n}")
            traceback.print_exc()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
