#!/usr/bin/env python3
"""The PyTorch baseline of `make bench`: the same GPT-2 / LLaMA shapes as the trainers (SPEC.md
descriptors), trained the way a PyTorch user would: torch.compile, BF16 autocast over FP32
weights, flash SDPA, fused AdamW, random tokens. Prints one line: tok/s, MFU, peak memory.

    python3 dev/bench/pytorch_baseline.py --model gpt2:d12 -b 16 -t 1024 --steps 20
"""
import argparse
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reference"))
from reference import ROPE_THETA, finish_fields, parse_model  # noqa: E402  SPEC descriptors


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg, C, hd = cfg, cfg.C, cfg.hd
        gpt2 = cfg.arch == 1
        norm = (lambda: nn.LayerNorm(C)) if gpt2 else (lambda: nn.RMSNorm(C, eps=1e-5))
        self.ln1, self.ln2 = norm(), norm()
        self.qkv = nn.Linear(C, (cfg.H + 2 * cfg.KV) * hd, bias=gpt2)
        self.proj = nn.Linear(C, C, bias=gpt2)
        self.fc = nn.Linear(C, cfg.F if gpt2 else 2 * cfg.F, bias=gpt2)
        self.fcproj = nn.Linear(cfg.F, C, bias=gpt2)

    def forward(self, x, rope):
        cfg, (B, T, C) = self.cfg, x.shape
        H, KV, hd = cfg.H, cfg.KV, cfg.hd
        q, k, v = self.qkv(self.ln1(x)).split([H * hd, KV * hd, KV * hd], dim=-1)
        q, k, v = (t.view(B, T, -1, hd).transpose(1, 2) for t in (q, k, v))
        if rope is not None:
            cos, sin = rope
            def rot(t):  # adjacent pairs, SPEC.md 3
                t0, t1 = t[..., 0::2], t[..., 1::2]
                return torch.stack((t0 * cos - t1 * sin, t0 * sin + t1 * cos), dim=-1).flatten(-2)
            q, k = rot(q), rot(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=KV != H)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        h = self.fc(self.ln2(x))
        if cfg.arch == 1:
            h = F.gelu(h, approximate="tanh")
        else:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        return x + self.fcproj(h)


class Model(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.Vp, cfg.C)
        self.wpe = nn.Embedding(cfg.T, cfg.C) if cfg.arch == 1 else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.L))
        self.lnf = nn.LayerNorm(cfg.C) if cfg.arch == 1 else nn.RMSNorm(cfg.C, eps=1e-5)
        self.head = None if cfg.arch == 1 else nn.Linear(cfg.C, cfg.Vp, bias=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx, targets):
        cfg, (B, T) = self.cfg, idx.shape
        x = self.wte(idx)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        else:
            inv = ROPE_THETA ** (-torch.arange(0, cfg.hd, 2, device=idx.device, dtype=torch.float32) / cfg.hd)
            ang = torch.arange(T, device=idx.device, dtype=torch.float32)[:, None] * inv[None, :]
            rope = (ang.cos(), ang.sin())
        for blk in self.blocks:
            x = blk(x, rope)
        x = self.lnf(x)
        logits = x @ (self.wte.weight if self.head is None else self.head.weight).t()
        return F.cross_entropy(logits[..., :cfg.V].float().reshape(-1, cfg.V), targets.reshape(-1))



def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gpt2:d12")
    ap.add_argument("-b", type=int, default=16)
    ap.add_argument("-t", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20, help="timed steps (after 5 warmup steps)")
    ap.add_argument("--no-compile", action="store_true")
    a = ap.parse_args()
    name, fields = parse_model(a.model)
    cfg = finish_fields(name, fields)
    if a.t > cfg.T:
        sys.exit(f"error: -t {a.t} exceeds the model's T = {cfg.T}")
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    model = Model(cfg).cuda()
    nparams = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() == 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    step_model = model if a.no_compile else torch.compile(model)
    idx = torch.randint(0, cfg.V, (a.b, a.t + 1), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / a.steps
    tok_s = a.b * a.t / dt
    flops_tok = 6.0 * (nparams - (cfg.T * cfg.C if cfg.arch == 1 else 0)) + 6.0 * cfg.L * a.t * cfg.C
    peak = torch.cuda.max_memory_reserved() / 2**20
    print(f"pytorch {a.model} B={a.b} T={a.t}: {dt * 1e3:.1f} ms/step, {tok_s:.0f} tok/s, "
          f"MFU {100 * tok_s * flops_tok / 989e12:.1f}%, peak {peak:.0f} MiB, {nparams} params")


if __name__ == "__main__":
    main()
