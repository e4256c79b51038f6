#!/usr/bin/env python3
"""Independent PyTorch reference for SPEC.md (model, simulated quantization, AdamW, ref files).

Written from SPEC.md alone, not from the C/CUDA trainers: gradients come from torch autograd,
except inside the block linears, whose backward is the spec's own (quantized) definition.

    python dev/reference/reference.py --model gpt2 --recipe fp4 --out test/ref/gpt2_fp4.bin
    python dev/reference/reference.py --check test/ref/gpt2_fp4.bin
    python dev/reference/reference.py --compare a.bin b.bin
"""

import argparse
import math
import os
import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

REF_MAGIC, REF_VERSION = 20261124, 1
ROPE_THETA, NORM_EPS = 10000.0, 1e-5
RECIPES = {"fp32": 0, "bf16": 1, "fp8": 2, "fp4": 3}
LAYOUTS = {"e2m1": 0, "e1m2": 1, "e3m0": 2}
GRAD_FORMATS = {"e4m3": 0, "e5m2": 1}
SCALINGS = {"vector": 0, "tensor": 1}
GRID4 = {
    "e2m1": (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0),
    "e1m2": (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5),
    "e3m0": (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0),
}
FP8 = {"e4m3": (3, -6, 448.0), "e5m2": (2, -14, 57344.0)}  # mantissa bits, min normal exp, max
N_SAMPLED_IDS = 64

# GPT-2 tokens of the start of tinyshakespeare.txt (EOT first, as llm.c's shards do), made once
# with tiktoken from shared/data/gpt2.tiktoken so that generation needs no network.
TOKENS = [
    50256, 5962, 22307, 25, 198, 8421, 356, 5120, 597, 2252, 11, 3285, 502, 2740, 13, 198, 198,
    3237, 25, 198, 5248, 461, 11, 2740, 13, 198, 198, 5962, 22307, 25, 198, 1639, 389, 477, 12939,
    2138, 284, 4656, 621, 284, 1145, 680, 30, 198, 198, 3237, 25, 198, 4965, 5634, 13, 12939, 13,
    198, 198, 5962, 22307, 25, 198, 5962, 11, 345, 760, 327, 1872, 385, 1526, 28599, 318, 4039,
    4472, 284, 262, 661, 13, 198, 198, 3237, 25, 198, 1135, 760, 470, 11, 356, 760, 470, 13, 198,
    198, 5962, 22307, 25, 198, 5756, 514, 1494, 683, 11, 290, 356, 1183, 423, 11676, 379, 674,
    898, 2756, 13, 198, 3792, 470, 257, 15593, 30, 198, 198, 3237, 25, 198, 2949, 517, 3375, 319,
    470, 26, 1309, 340, 307,
]


# ----------------------------------------------------------------------------------------------
# Configuration and parameter layout (SPEC 1, 2)

@dataclass
class Config:
    arch: int  # 1 GPT-2, 2 LLaMA
    V: int
    Vp: int
    T: int
    L: int
    H: int
    KV: int
    C: int
    F: int

    @property
    def hd(self):
        return self.C // self.H


def make_config(arch, V, T, L, H, KV, C, F):
    cfg = Config(arch, V, (V + 127) // 128 * 128, T, L, H, KV, C, F)
    if arch == 1 and KV != H:
        raise ValueError("GPT-2 needs KV == H")
    if C % H or (C // H) % 2 or H % KV:
        raise ValueError(f"bad head layout C={C} H={H} KV={KV}")
    return cfg


def parse_model(desc):
    """SPEC 1 descriptors: 'gpt2:d12,T=256', 'llama:L=2,C=64,...'. A bare 'gpt2' / 'llama'
    is the small config of the committed reference states."""
    name, _, rest = desc.partition(":")
    items = [s for s in rest.split(",") if s]
    if name == "gpt2":
        f = dict(L=3, C=64, H=4, T=64, V=50257)
    elif name == "llama":
        f = dict(L=3, C=64, H=4, KV=2, F=192, T=64, V=50257)
    else:
        raise ValueError(f"unknown model {name!r}")
    if items and items[0].startswith("d") and items[0][1:].isdigit():
        n = int(items.pop(0)[1:])
        if name == "gpt2":
            f = dict(L=n, C=64 * n, H=n, T=1024, V=50257)
            f.update({24: dict(C=1024, H=16), 36: dict(C=1280, H=20), 48: dict(C=1600, H=25)}.get(n, {}))
        else:
            f = dict(L=n, C=128 * n, H=2 * n, KV=max(1, n // 2), T=2048, V=50257)
    for it in items:
        k, _, v = it.partition("=")
        if k not in ("L", "C", "H", "KV", "F", "T", "V"):
            raise ValueError(f"unknown model key {k!r}")
        f[k] = int(v)
    return name, f


def finish_fields(name, f):
    if name == "gpt2":
        f.setdefault("KV", f["H"])
        f.setdefault("F", 4 * f["C"])
    elif "F" not in f:  # only llama:dN leaves F open
        f["F"] = 256 * math.ceil(8 * f["C"] / 3 / 256)
    return make_config(1 if name == "gpt2" else 2, f["V"], f["T"], f["L"], f["H"], f["KV"],
                       f["C"], f["F"])


def param_specs(cfg):
    """(name, shape, init, weight-decayed) in SPEC 2 order; init is a std, 'one' or 'zero'."""
    L, C, F, Vp, T, hd = cfg.L, cfg.C, cfg.F, cfg.Vp, cfg.T, cfg.hd
    sp = 0.02 / math.sqrt(2 * L)
    if cfg.arch == 1:
        return [
            ("wte", (Vp, C), 0.02, True), ("wpe", (T, C), 0.02, True),
            ("ln1w", (L, C), "one", False), ("ln1b", (L, C), "zero", False),
            ("qkvw", (L, 3 * C, C), 0.02, True), ("qkvb", (L, 3 * C), "zero", False),
            ("attprojw", (L, C, C), sp, True), ("attprojb", (L, C), "zero", False),
            ("ln2w", (L, C), "one", False), ("ln2b", (L, C), "zero", False),
            ("fcw", (L, F, C), 0.02, True), ("fcb", (L, F), "zero", False),
            ("fcprojw", (L, C, F), sp, True), ("fcprojb", (L, C), "zero", False),
            ("lnfw", (C,), "one", False), ("lnfb", (C,), "zero", False),
        ]
    qkv_rows = (cfg.H + 2 * cfg.KV) * hd
    return [
        ("wte", (Vp, C), 0.02, True), ("ln1w", (L, C), "one", False),
        ("qkvw", (L, qkv_rows, C), 0.02, True), ("attprojw", (L, C, C), sp, True),
        ("ln2w", (L, C), "one", False), ("fcw", (L, 2 * F, C), 0.02, True),
        ("fcprojw", (L, C, F), sp, True), ("lnfw", (C,), "one", False),
        ("lmhead", (Vp, C), 0.02, True),
    ]


# ----------------------------------------------------------------------------------------------
# Counter-based initialization (SPEC 2), vectorized with wrapping uint64 arithmetic

_U64 = np.uint64


def splitmix64(x):
    x = np.asarray(x, dtype=np.uint64) + _U64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def hash64(a, b):
    return splitmix64(np.asarray(a, dtype=np.uint64) ^ splitmix64(b))


def uniform(h):
    return ((h >> _U64(40)) + _U64(1)).astype(np.float64) * 2.0 ** -24


def init_normal(seed, j, n, std, chunk=1 << 22):
    key = hash64(np.array([seed], np.uint64), np.array([j], np.uint64))
    out = np.empty(n, np.float32)
    for lo in range(0, n, chunk):
        i = np.arange(lo, min(n, lo + chunk), dtype=np.uint64)
        u1 = uniform(hash64(key, _U64(2) * i))
        u2 = uniform(hash64(key, _U64(2) * i + _U64(1)))
        out[lo:lo + len(i)] = (std * (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)))
    return out


def init_params(cfg, seed):
    params = []
    for j, (name, shape, init, _) in enumerate(param_specs(cfg)):
        n = int(np.prod(shape))
        if init == "one":
            a = np.ones(n, np.float32)
        elif init == "zero":
            a = np.zeros(n, np.float32)
        else:
            a = init_normal(seed, j, n, init)
        a = a.reshape(shape)
        if name in ("wte", "lmhead"):
            a[cfg.V:] = 0.0
        params.append(a)
    return params


# ----------------------------------------------------------------------------------------------
# Element formats (SPEC 4): round to nearest, ties to even, saturating, sign kept

def round_grid4(x, layout):
    g = GRID4[layout]
    a = x.abs()
    code = torch.zeros_like(a, dtype=torch.long)
    for i in range(7):
        m = (g[i] + g[i + 1]) / 2  # exact in binary
        code += ((a >= m) if i % 2 else (a > m)).long()  # a tie goes to the even code
    mag = torch.tensor(g, dtype=x.dtype, device=x.device)[code]
    return torch.copysign(mag, x)


def round_fp8(x, fmt):
    mbits, emin, maxv = FP8[fmt]
    a = x.abs()
    _, e = torch.frexp(a)  # a = m 2^e, m in [0.5, 1): the leading bit has exponent e - 1
    e = torch.clamp(e.long() - 1, min=emin)  # below the min normal the step stays the subnormal one
    step = torch.pow(2.0, (e - mbits).double()).to(x.dtype)  # exact powers of two
    q = torch.round(a / step) * step  # a / step is exact; torch.round is half-to-even
    return torch.copysign(torch.clamp(q, max=maxv), x)


def round_bf16(x):
    """Nearest BF16 (ties to even) of the FP32 value of x, done on the bits."""
    dt = x.dtype
    u = x.float().contiguous().view(torch.int32).long() & 0xFFFFFFFF
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    u = torch.where(u >= 2 ** 31, u - 2 ** 32, u)
    return u.to(torch.int32).view(torch.float32).to(dt)


def grid_max(fmt):
    return GRID4[fmt][7] if fmt in GRID4 else FP8[fmt][2]


def round_fmt(x, fmt):
    return round_grid4(x, fmt) if fmt in GRID4 else round_fp8(x, fmt)


def quantize(x, fmt, dim, scaling):
    """Absmax-scaled quantization of the vectors along `dim` of a 2-D x (dim=1: per row,
    dim=0: per column). Returns (dequantized x, codes, scale broadcastable against x)."""
    one = torch.ones((1, 1), dtype=x.dtype, device=x.device)
    if fmt == "fp32":
        return x, x, one
    if fmt == "bf16":
        r = round_bf16(x)
        return r, r, one
    if scaling == "tensor":
        amax = x.abs().amax().reshape(1, 1)
    else:
        amax = x.abs().amax(dim=dim, keepdim=True)
    s = amax / grid_max(fmt)
    zero = s == 0
    c = round_fmt(x / torch.where(zero, one, s), fmt)
    c = torch.where(zero, torch.zeros_like(c), c)
    return c * s, c, s


def occ_clamp(x, alpha):
    """Per-row clamp to the row's own alpha / (1-alpha) quantiles (SPEC 4, OCC step 1); the
    residual x - xc rounded to BF16 (the GPU's compensation GEMM operand)."""
    K = x.shape[1]
    v, _ = torch.sort(x, dim=1)

    def quantile(p):
        pos = p * (K - 1)  # Python float: double
        i = math.floor(pos)
        if i >= K - 1:
            return v[:, K - 1:K]
        f = torch.tensor(float(np.float32(pos - i)), dtype=x.dtype, device=x.device)
        return v[:, i:i + 1] + f * (v[:, i + 1:i + 2] - v[:, i:i + 1])

    lo, hi = quantile(1.0 - alpha), quantile(alpha)
    xc = torch.minimum(torch.maximum(x, lo), hi)
    return xc, (x - xc).to(torch.bfloat16).to(x.dtype)


def dge_derivative(w, layout, k):
    """f'(w) of the DGE (SPEC 4), w in grid units, capped at 3."""
    g = torch.tensor(GRID4[layout], dtype=w.dtype, device=w.device)
    a = w.abs()
    i = (a.unsqueeze(-1) >= g[1:7]).sum(-1)  # interval [g_i, g_i+1] holding a, the last if a >= g7
    lo = g[i]
    delta = g[i + 1] - lo
    u = (2 * (a - lo) / delta - 1).abs()
    inv_k = torch.tensor(1.0, dtype=w.dtype) / torch.tensor(k, dtype=w.dtype)  # 1/k in the dtype
    d = inv_k.to(w.device) * torch.pow(u, (inv_k - 1).to(w.device))
    return torch.clamp(d, max=3.0)  # the power is +inf at the midpoint


# ----------------------------------------------------------------------------------------------
# The quantized block linear (SPEC 4, "A quantized linear, forward and backward")

@dataclass(frozen=True)
class LinearRecipe:
    fx: str  # format of activation X, weight W, output gradient G
    fw: str
    fg: str
    scaling: str = "vector"
    dge_k: Optional[float] = None  # DGE on (fp4 weights only) when set
    occ_alpha: Optional[float] = None  # OCC on (fp4 activations only) when set
    occ_operand: bool = False  # OCC's residual folded into X's E4M3 codes, not R W^T in BF16


class QuantLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, rc):
        if rc.occ_alpha is not None:
            xc, r = occ_clamp(x, rc.occ_alpha)
        else:
            xc, r = x, None
        xq, cx, sx = quantize(xc, rc.fx, 1, rc.scaling)  # per token
        if r is not None and rc.occ_operand:
            # each clamped entry keeps its excess over the clamp in its code, in E4M3
            # (llmc/quant.h occ_fold); a zero-scale row has none to keep
            excess = torch.where(sx == 0, torch.zeros_like(x), (x - xc) / torch.where(sx == 0, 1.0, sx))
            cx = torch.where(excess != 0, round_fmt(cx + excess, "e4m3"), cx)
            xq, r = cx * sx, None
        wq, cw, sw = quantize(w, rc.fw, 1, rc.scaling)  # per output channel
        y = xq @ wq.t()
        if r is not None:
            y = y + r @ w.t()  # compensation with the unquantized W
        if b is not None:
            y = y + b
        ctx.rc, ctx.has_b = rc, b is not None
        ctx.save_for_backward(cx, sx, cw, sw, w, r if r is not None else torch.empty(0))
        return y

    @staticmethod
    def backward(ctx, g):
        rc = ctx.rc
        cx, sx, cw, sw, w, r = ctx.saved_tensors
        # dgrad: the weight scale sits on the contracted dim (n), fold it into G, quantize per token
        g1q, _, _ = quantize(g * sw.reshape(1, -1), rc.fg, 1, rc.scaling)
        dx = g1q @ cw
        # wgrad: the activation scale sits on the contracted dim (t), fold it, quantize per channel
        g2q, _, _ = quantize(g * sx.reshape(-1, 1), rc.fg, 0, rc.scaling)
        dw = g2q.t() @ cx
        if rc.dge_k is not None:
            wg = torch.where(sw == 0, torch.zeros_like(w), w / torch.where(sw == 0, 1.0, sw))
            dw = dw * dge_derivative(wg, rc.fw, rc.dge_k)
        if r.numel():
            dw = dw + g.t() @ r
        db = g.sum(0) if ctx.has_b else None
        return dx, dw, db, None


def qlinear(x, w, b, rc):
    shp = x.shape
    y = QuantLinearFn.apply(x.reshape(-1, shp[-1]), w, b, rc)
    return y.reshape(*shp[:-1], w.shape[0])


@dataclass
class Recipe:
    name: str = "fp32"
    dge: bool = False
    dge_k: float = 5.0
    occ: bool = False
    occ_alpha: float = 0.99
    occ_operand: bool = False
    layout: str = "e2m1"
    fp4_attn: bool = False
    scaling: str = "vector"
    grad_format: str = "e4m3"

    def linear(self, part):
        """LinearRecipe of the attention ('attn': qkv, attproj) or MLP ('mlp': fc, fcproj)."""
        n = self.name
        if n in ("fp32", "bf16"):
            fx = fw = fg = n
        elif n == "fp8" or (n == "fp4" and part == "attn" and not self.fp4_attn):
            fx, fw, fg = "e4m3", "e4m3", self.grad_format
        else:
            fx, fw, fg = self.layout, self.layout, self.grad_format
        return LinearRecipe(
            fx, fw, fg, self.scaling,
            dge_k=self.dge_k if self.dge and fw in GRID4 else None,
            occ_alpha=self.occ_alpha if self.occ and fx in GRID4 else None,
            occ_operand=self.occ_operand)


# ----------------------------------------------------------------------------------------------
# Forward (SPEC 3)

def layernorm(x, w, b):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + NORM_EPS) * w + b


def rmsnorm(x, w):
    return x * w / torch.sqrt((x * x).mean(-1, keepdim=True) + NORM_EPS)


def gelu(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def silu(x):
    return x / (1 + torch.exp(-x))


def rope_table(T, hd, dtype, device):
    pos = np.arange(T, dtype=np.float64)[:, None]
    i = np.arange(hd // 2, dtype=np.float64)[None, :]
    ang = pos * ROPE_THETA ** (-2 * i / hd)
    cos, sin = (torch.tensor(np.cos(ang).astype(np.float32), dtype=dtype, device=device),
                torch.tensor(np.sin(ang).astype(np.float32), dtype=dtype, device=device))
    return cos, sin


def rope(x, cos, sin):
    """x (B, h, T, hd): rotate the adjacent pairs (x[2i], x[2i+1])."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


def attention(q, k, v, H, KV):
    """q (B, H, T, hd), k/v (B, KV, T, hd); causal; query head h reads kv head h / (H/KV)."""
    k = k.repeat_interleave(H // KV, dim=1)
    v = v.repeat_interleave(H // KV, dim=1)
    T, hd = q.shape[2], q.shape[3]
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    att = torch.softmax(att.masked_fill(mask, float("-inf")), dim=-1)
    return att @ v


def forward(P, cfg, recipe, idx, targets):
    """P: dict of parameter tensors. Returns logits (B, T, Vp) and the mean loss."""
    B, T = idx.shape
    H, KV, hd, C, F = cfg.H, cfg.KV, cfg.hd, cfg.C, cfg.F
    ra, rm = recipe.linear("attn"), recipe.linear("mlp")
    gpt2 = cfg.arch == 1
    x = P["wte"][idx] + (P["wpe"][:T] if gpt2 else 0)
    if not gpt2:
        cos, sin = rope_table(T, hd, x.dtype, x.device)
    for l in range(cfg.L):
        if gpt2:
            h = layernorm(x, P["ln1w"][l], P["ln1b"][l])
            qkv = qlinear(h, P["qkvw"][l], P["qkvb"][l], ra)
            q, k, v = qkv.split([C, C, C], dim=-1)
        else:
            h = rmsnorm(x, P["ln1w"][l])
            qkv = qlinear(h, P["qkvw"][l], None, ra)
            q, k, v = qkv.split([H * hd, KV * hd, KV * hd], dim=-1)
        q = q.reshape(B, T, H, hd).transpose(1, 2)
        k = k.reshape(B, T, KV, hd).transpose(1, 2)
        v = v.reshape(B, T, KV, hd).transpose(1, 2)
        if not gpt2:
            q, k = rope(q, cos, sin), rope(k, cos, sin)
        a = attention(q, k, v, H, KV).transpose(1, 2).reshape(B, T, H * hd)
        x = x + qlinear(a, P["attprojw"][l], P["attprojb"][l] if gpt2 else None, ra)
        if gpt2:
            h = layernorm(x, P["ln2w"][l], P["ln2b"][l])
            h = gelu(qlinear(h, P["fcw"][l], P["fcb"][l], rm))
            x = x + qlinear(h, P["fcprojw"][l], P["fcprojb"][l], rm)
        else:
            h = rmsnorm(x, P["ln2w"][l])
            gate, up = qlinear(h, P["fcw"][l], None, rm).split([F, F], dim=-1)
            x = x + qlinear(silu(gate) * up, P["fcprojw"][l], None, rm)
    if gpt2:
        logits = layernorm(x, P["lnfw"], P["lnfb"]) @ P["wte"].t()
    else:
        logits = rmsnorm(x, P["lnfw"]) @ P["lmhead"].t()
    logp = torch.log_softmax(logits[..., :cfg.V], dim=-1)  # padded columns take no part
    loss = -logp.gather(-1, targets.unsqueeze(-1)).mean()
    return logits, loss


# ----------------------------------------------------------------------------------------------
# Training (SPEC 5): S steps of AdamW on one fixed batch

@dataclass
class Optim:
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    wd: float = 0.1
    clip: float = 1.0


def batch_tokens(B, Tb, V):
    tok = np.resize(np.array(TOKENS, np.int32), B * Tb + 1)  # repeats the passage if needed
    tok = tok % V  # only changes anything for toy vocabularies (tests)
    return tok[:-1].reshape(B, Tb), tok[1:].reshape(B, Tb)


def train(cfg, recipe, opt, seed, B, Tb, steps, dtype, device, log=print):
    specs = param_specs(cfg)
    names = [s[0] for s in specs]
    P = [torch.tensor(a, dtype=dtype, device=device, requires_grad=True)
         for a in init_params(cfg, seed)]
    Pd = dict(zip(names, P))
    m = [torch.zeros_like(p) for p in P]
    v = [torch.zeros_like(p) for p in P]
    inputs, targets = batch_tokens(B, Tb, cfg.V)
    idx = torch.tensor(inputs, dtype=torch.long, device=device)
    tgt = torch.tensor(targets, dtype=torch.long, device=device)
    losses, norms, logits1, grads1 = [], [], None, None
    for t in range(1, steps + 1):
        for p in P:
            p.grad = None
        logits, loss = forward(Pd, cfg, recipe, idx, tgt)
        loss.backward()
        grads = [p.grad for p in P]
        norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
        losses.append(float(loss.detach()))
        norms.append(norm)
        log(f"step {t:3d}  loss {losses[-1]:.6f}  norm {norm:.6f}")
        if t == 1:
            logits1 = logits.detach().reshape(B * Tb, cfg.Vp).float().cpu().numpy()
            grads1 = [g.detach().float().cpu().numpy() for g in grads]
        with torch.no_grad():
            # the clip factor is computed in double and applied in the working dtype
            scale = opt.clip / norm if opt.clip > 0 and norm > opt.clip else None
            bc1, bc2 = 1.0 - opt.beta1 ** t, 1.0 - opt.beta2 ** t
            for p, g, mi, vi, (_, _, _, decay) in zip(P, grads, m, v, specs):
                if scale is not None:
                    g = g * torch.tensor(scale, dtype=dtype, device=device)
                mi.mul_(opt.beta1).add_((1 - opt.beta1) * g)
                vi.mul_(opt.beta2).add_((1 - opt.beta2) * g * g)
                upd = (mi / bc1) / (torch.sqrt(vi / bc2) + opt.eps)
                if decay:
                    upd = upd + opt.wd * p
                p.sub_(opt.lr * upd)
    return dict(inputs=inputs, targets=targets, losses=losses, gradnorms=norms,
                logits=logits1, grads=grads1)


# ----------------------------------------------------------------------------------------------
# Reference-state files (SPEC 6)

def sampled_ids(inputs, targets, V, Vp):
    """Vocabulary ids whose rows / columns a Vp-sized tensor stores."""
    spaced = np.round(np.linspace(0, V - 1, N_SAMPLED_IDS)).astype(np.int64)
    ids = np.concatenate([np.ravel(inputs), np.ravel(targets), spaced, [V - 1, Vp - 1]])
    return np.unique(ids.astype(np.int64))


def record_layout(hdr, inputs, targets):
    """Expected (tag, shape, flat stored indices or None) of every record, from the header."""
    cfg = make_config(hdr["arch"], hdr["V"], hdr["T"], hdr["L"], hdr["H"], hdr["KV"], hdr["C"],
                      hdr["F"])
    ids = sampled_ids(inputs, targets, cfg.V, cfg.Vp)
    N = hdr["B"] * hdr["Tb"]
    cols = (np.arange(N)[:, None] * cfg.Vp + ids[None, :]).ravel()  # whole logit columns
    out = [(0, (N, cfg.Vp), cols)]
    for j, (name, shape, _, _) in enumerate(param_specs(cfg)):
        rows = None
        if name in ("wte", "lmhead"):  # whole gradient rows
            rows = (ids[:, None] * cfg.C + np.arange(cfg.C)[None, :]).ravel()
        out.append((1 + j, shape, rows))
    return out


INT_FIELDS = ["arch", "V", "Vp", "T", "L", "H", "KV", "C", "F", "B", "Tb", "recipe", "dge",
              "occ", "layout", "fp4_attn", "scaling", "grad_format", "steps", "seed"]
FLOAT_FIELDS = ["rope_theta", "norm_eps", "occ_alpha", "dge_k", "lr", "beta1", "beta2", "eps",
                "wd", "clip"]


def write_ref(path, hdr, res):
    h = np.zeros(256, "<i4")
    h[0], h[1] = REF_MAGIC, REF_VERSION
    for i, k in enumerate(INT_FIELDS):
        h[2 + i] = hdr[k]
    hf = h.view("<f4")
    for i, k in enumerate(FLOAT_FIELDS):
        hf[32 + i] = hdr[k]
    layout = record_layout(hdr, res["inputs"], res["targets"])
    tensors = [res["logits"]] + res["grads"]
    assert len(tensors) == len(layout)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(h.tobytes())
        f.write(np.ascontiguousarray(res["inputs"], "<i4").tobytes())
        f.write(np.ascontiguousarray(res["targets"], "<i4").tobytes())
        f.write(np.asarray(res["losses"], "<f4").tobytes())
        f.write(np.asarray(res["gradnorms"], "<f4").tobytes())
        for (tag, shape, index), a in zip(layout, tensors):
            a = np.ascontiguousarray(a, np.float32).ravel()
            assert a.size == int(np.prod(shape))
            a64 = a.astype(np.float64)
            nstored = a.size if index is None else index.size
            f.write(np.array([tag, a.size, nstored, 0], "<i4").tobytes())
            f.write(np.array([a64.sum(), (a64 * a64).sum()], "<f8").tobytes())
            if index is not None:
                f.write(index.astype("<i4").tobytes())
                f.write(a[index].astype("<f4").tobytes())
            else:
                f.write(a.astype("<f4").tobytes())
    os.replace(tmp, path)


class RefFormatError(ValueError):
    pass


def read_ref(path):
    """Parse a reference-state file; checks magic, version, every size and the file length."""
    buf = open(path, "rb").read()
    pos = 0

    def take(dtype, n):
        nonlocal pos
        nb = np.dtype(dtype).itemsize * n
        if n < 0 or pos + nb > len(buf):
            raise RefFormatError(f"{path}: truncated at byte {pos} (need {nb} more)")
        a = np.frombuffer(buf, dtype, n, pos)
        pos += nb
        return a

    h = take("<i4", 256)
    if h[0] != REF_MAGIC or h[1] != REF_VERSION:
        raise RefFormatError(f"{path}: bad magic/version {h[0]} {h[1]}")
    hdr = {k: int(h[2 + i]) for i, k in enumerate(INT_FIELDS)}
    hf = h.view("<f4")
    hdr.update({k: float(hf[32 + i]) for i, k in enumerate(FLOAT_FIELDS)})
    for k in ("V", "T", "L", "H", "KV", "C", "F", "B", "Tb", "steps"):
        if hdr[k] <= 0:
            raise RefFormatError(f"{path}: header {k} = {hdr[k]}")
    if hdr["Vp"] != (hdr["V"] + 127) // 128 * 128:
        raise RefFormatError(f"{path}: Vp {hdr['Vp']} does not match V {hdr['V']}")
    if hdr["arch"] not in (1, 2) or hdr["Tb"] > hdr["T"]:
        raise RefFormatError(f"{path}: bad arch or Tb")
    ranges = dict(recipe=4, dge=2, occ=3, layout=3, fp4_attn=2, scaling=2, grad_format=2)
    for k, n in ranges.items():
        if not 0 <= hdr[k] < n:
            raise RefFormatError(f"{path}: header {k} = {hdr[k]} out of range")
    if np.any(h[2 + len(INT_FIELDS):32] != 0) or np.any(h[32 + len(FLOAT_FIELDS):] != 0):
        raise RefFormatError(f"{path}: reserved header words are not zero")
    N = hdr["B"] * hdr["Tb"]
    inputs = take("<i4", N).reshape(hdr["B"], hdr["Tb"])
    targets = take("<i4", N).reshape(hdr["B"], hdr["Tb"])
    for a in (inputs, targets):
        if a.min() < 0 or a.max() >= hdr["V"]:
            raise RefFormatError(f"{path}: token id out of range")
    losses = take("<f4", hdr["steps"])
    gradnorms = take("<f4", hdr["steps"])
    try:
        layout = record_layout(hdr, inputs, targets)
    except ValueError as e:
        raise RefFormatError(f"{path}: {e}")
    records = []
    for tag, shape, index in layout:
        tg, numel, nstored, zero = (int(x) for x in take("<i4", 4))
        s, ss = (float(x) for x in take("<f8", 2))
        want_n = int(np.prod(shape))
        want_s = want_n if index is None else index.size
        if (tg, numel, nstored, zero) != (tag, want_n, want_s, 0):
            raise RefFormatError(f"{path}: record header {(tg, numel, nstored, zero)}, expected "
                                 f"{(tag, want_n, want_s, 0)}")
        if nstored == numel:
            idx = None
            vals = take("<f4", numel).reshape(shape)
        else:
            idx = take("<i4", nstored)
            if np.any(np.diff(idx) <= 0) or idx[0] < 0 or idx[-1] >= numel:
                raise RefFormatError(f"{path}: record {tag}: indices not ascending / in range")
            if not np.array_equal(idx, index):
                raise RefFormatError(f"{path}: record {tag}: indices are not the expected rows")
            vals = take("<f4", nstored)
        records.append(dict(tag=tag, shape=shape, numel=numel, sum=s, sumsq=ss, index=idx,
                            values=vals))
    if pos != len(buf):
        raise RefFormatError(f"{path}: {len(buf) - pos} trailing bytes")
    return dict(header=hdr, inputs=inputs, targets=targets, losses=losses, gradnorms=gradnorms,
                records=records)


def check_ref(path):
    """Read and validate a file: layout (read_ref) plus the consistency of its values."""
    r = read_ref(path)
    hdr = r["header"]
    if not (np.all(np.isfinite(r["losses"])) and np.all(np.isfinite(r["gradnorms"]))
            and np.all(r["gradnorms"] >= 0)):
        raise RefFormatError(f"{path}: non-finite loss or grad norm")
    if abs(float(r["losses"][0]) - math.log(hdr["V"])) > 0.5 * math.log(hdr["V"]):
        raise RefFormatError(f"{path}: step-1 loss {r['losses'][0]} far from ln V")
    sq_total = 0.0
    for rec in r["records"]:
        v = rec["values"].astype(np.float64).ravel()
        if not np.all(np.isfinite(v)) or not math.isfinite(rec["sum"]) or rec["sumsq"] < 0:
            raise RefFormatError(f"{path}: record {rec['tag']}: non-finite values")
        vs, vss = v.sum(), (v * v).sum()
        if rec["index"] is None:
            tol = 1e-9 * (1 + np.abs(v).sum())
            if abs(vs - rec["sum"]) > tol or abs(vss - rec["sumsq"]) > 1e-9 * (1 + vss):
                raise RefFormatError(f"{path}: record {rec['tag']}: sum/sumsq do not match data")
        elif vss > rec["sumsq"] * (1 + 1e-9) + 1e-30:
            raise RefFormatError(f"{path}: record {rec['tag']}: sumsq below stored part")
        if rec["tag"] > 0:
            sq_total += rec["sumsq"]
    # step 1's gradient norm is that of the stored gradients
    if abs(math.sqrt(sq_total) - float(r["gradnorms"][0])) > 1e-4 * math.sqrt(sq_total) + 1e-12:
        raise RefFormatError(f"{path}: gradnorm[0] {r['gradnorms'][0]} vs records "
                             f"{math.sqrt(sq_total)}")
    return r


def compare_refs(a_path, b_path):
    """Print per-field differences between two files of the same configuration."""
    a, b = check_ref(a_path), check_ref(b_path)
    ha, hb = a["header"], b["header"]
    diff = {k: (ha[k], hb[k]) for k in ha if ha[k] != hb[k]}
    if any(k in diff for k in INT_FIELDS[:11] + ["steps"]):
        print("shapes differ, not comparable:", diff)
        return
    if diff:
        print("note, headers differ:", diff)
    print("loss      ", " ".join(f"{x:.3e}" for x in np.abs(a["losses"] - b["losses"])))
    print("gradnorm  ", " ".join(f"{x:.3e}" for x in np.abs(a["gradnorms"] - b["gradnorms"])))
    names = ["logits"] + [s[0] for s in param_specs(make_config(
        *(a["header"][k] for k in ("arch", "V", "T", "L", "H", "KV", "C", "F"))))]
    for ra, rb, n in zip(a["records"], b["records"], names):
        x, y = ra["values"].astype(np.float64).ravel(), rb["values"].astype(np.float64).ravel()
        err = np.abs(x - y).max() / max(np.abs(y).max(), 1e-30)
        print(f"{n:9s} max|diff|/max|b| {err:.3e}  sum {ra['sum']:+.6e} {rb['sum']:+.6e}")


# ----------------------------------------------------------------------------------------------
# Command line

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", metavar="FILE", help="validate FILE and exit")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), help="diff two files and exit")
    ap.add_argument("--out", help="reference-state file to write")
    ap.add_argument("--model", default="gpt2",
                    help="SPEC 1 descriptor, e.g. gpt2, gpt2:d12,T=256, llama:L=2,C=64,H=4,KV=2")
    for k in ("L", "C", "H", "KV", "F", "T", "V"):
        ap.add_argument(f"--{k}", type=int, help=f"override model field {k}")
    ap.add_argument("--B", type=int, default=2)
    ap.add_argument("--Tb", type=int, default=32, help="sequence length of the batch")
    ap.add_argument("--recipe", choices=list(RECIPES), default="fp32")
    ap.add_argument("--dge", type=int, choices=(0, 1), help="default: 1 for fp4, else 0")
    ap.add_argument("--dge-k", type=float, default=5.0)
    ap.add_argument("--occ", type=int, choices=(0, 1), help="default: 1 for fp4, else 0")
    ap.add_argument("--occ-alpha", type=float, default=0.99)
    ap.add_argument("--occ-comp", choices=("bf16", "operand"), default="bf16",
                    help="OCC's compensation: R W^T in BF16, or in X's E4M3 codes (header occ 2)")
    ap.add_argument("--fp4", choices=list(LAYOUTS), default="e2m1", help="4-bit layout")
    ap.add_argument("--fp4-attn", type=int, choices=(0, 1), default=0)
    ap.add_argument("--scaling", choices=list(SCALINGS), default="vector")
    ap.add_argument("--grad-format", choices=list(GRAD_FORMATS), default="e4m3")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.95)
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--dtype", choices=("float64", "float32"),
                    help="working precision; default float64 for fp32, float32 otherwise")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)

    if a.check:
        r = check_ref(a.check)
        print(f"{a.check}: OK  {r['header']}\n  losses {np.round(r['losses'], 5).tolist()}")
        return 0
    if a.compare:
        compare_refs(*a.compare)
        return 0
    if not a.out:
        ap.error("--out, --check or --compare is required")

    name, fields = parse_model(a.model)
    for k in ("L", "C", "H", "KV", "F", "T", "V"):
        if getattr(a, k) is not None:
            fields[k] = getattr(a, k)
    cfg = finish_fields(name, fields)
    if not (0 < a.Tb <= cfg.T and a.B > 0 and a.steps > 0 and 0 <= a.seed < 2 ** 31):
        ap.error("need 0 < Tb <= T, B > 0, steps > 0, 0 <= seed < 2^31")
    fp4 = a.recipe == "fp4"
    dge = fp4 if a.dge is None else bool(a.dge)
    occ = fp4 if a.occ is None else bool(a.occ)
    f32 = lambda x: float(np.float32(x))  # the run uses exactly the values the header stores
    operand = occ and a.occ_comp == "operand"
    recipe = Recipe(a.recipe, dge, f32(a.dge_k), occ, f32(a.occ_alpha), operand, a.fp4, bool(a.fp4_attn),
                    a.scaling, a.grad_format)
    opt = Optim(f32(a.lr), f32(a.beta1), f32(a.beta2), f32(a.eps), f32(a.wd), f32(a.clip))
    dtype = {"float64": torch.float64, "float32": torch.float32}[
        a.dtype or ("float64" if a.recipe == "fp32" else "float32")]
    if a.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    log = (lambda s: None) if a.quiet else print
    log(f"{a.model} {cfg} recipe={recipe} dtype={dtype} device={a.device}")
    res = train(cfg, recipe, opt, a.seed, a.B, a.Tb, a.steps, dtype, a.device, log)
    hdr = dict(arch=cfg.arch, V=cfg.V, Vp=cfg.Vp, T=cfg.T, L=cfg.L, H=cfg.H, KV=cfg.KV, C=cfg.C,
               F=cfg.F, B=a.B, Tb=a.Tb, recipe=RECIPES[a.recipe], dge=int(dge), occ=int(occ) + int(operand),
               layout=LAYOUTS[a.fp4], fp4_attn=a.fp4_attn, scaling=SCALINGS[a.scaling],
               grad_format=GRAD_FORMATS[a.grad_format], steps=a.steps, seed=a.seed,
               rope_theta=ROPE_THETA, norm_eps=NORM_EPS, occ_alpha=a.occ_alpha, dge_k=a.dge_k,
               lr=a.lr, beta1=a.beta1, beta2=a.beta2, eps=a.eps, wd=a.wd, clip=a.clip)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    write_ref(a.out, hdr, res)
    log(f"wrote {a.out} ({os.path.getsize(a.out)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
