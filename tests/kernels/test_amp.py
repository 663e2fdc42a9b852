"""Kernel entry points are independent of autocast: the same inputs give the same output and
gradients inside ``torch.autocast(bfloat16)`` as outside, bit for bit (each family fixes its own
precision; autocast would recast its float32 arithmetic, e.g. the chunk forms' matmuls)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mirasdsl.kernels.deep_memory import DeepMemoryConfig, deep_memory
from mirasdsl.kernels.delta import delta_rule
from mirasdsl.kernels.gla import gated_linear_attention

B, T, H, D = 2, 37, 2, 16


def _inputs(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = {n: torch.randn(B, T, H, D, generator=g).bfloat16() for n in ("q", "k", "v")}  # [B, T, H, D]
    x["k"] = F.normalize(x["k"].float(), dim=-1).bfloat16()
    x["beta"] = torch.rand(B, T, H, generator=g).bfloat16()  # [B, T, H]
    x["g"] = F.logsigmoid(torch.randn(B, T, H, generator=g) + 3)  # [B, T, H], float32
    x["eta"] = 0.1 * torch.rand(B, T, H, generator=g)
    x["mu"] = 0.9 * torch.rand(B, T, H, generator=g)
    x["w1"] = torch.randn(H, D, 2 * D, generator=g) / D ** 0.5  # [H, D, 2D]
    x["w2"] = torch.randn(H, 2 * D, D, generator=g) / (2 * D) ** 0.5
    return {n: t.requires_grad_(True) for n, t in x.items()}


def _delta(x):
    return delta_rule(x["q"], x["k"], x["v"], x["beta"], x["g"], backend="chunk")[0]


def _gla(x):
    return gated_linear_attention(x["q"], x["k"], x["v"], x["g"], backend="chunk")[0]


def _deep(step: int):
    cfg = DeepMemoryConfig(depth=2, hidden=2 * D, activation="gelu", residual=True, norm=True, bias="l2",
                           momentum=True, chunk_size=16, step=step)
    return lambda x: deep_memory(x["q"], x["k"], x["v"], x["eta"], (x["w1"], x["w2"]), cfg, x["g"], x["mu"],
                                 backend="chunk")[0]


CASES = {"delta": _delta, "gla": _gla, "deep_memory": _deep(1), "deep_memory_steps": _deep(4)}


def _run(fn, bf16: bool) -> list[torch.Tensor]:
    x = _inputs(0)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        o = fn(x)  # [B, T, H, D]
    o.float().pow(2).sum().backward()  # outside, as torch.amp's recipe has it
    return [o.detach()] + [x[n].grad for n in sorted(x) if x[n].grad is not None]


@pytest.mark.parametrize("name", list(CASES))
def test_entry_point_ignores_autocast(name):
    plain, cast = _run(CASES[name], False), _run(CASES[name], True)
    assert len(plain) == len(cast) > 1
    for a, b in zip(plain, cast):
        assert a.dtype == b.dtype and torch.equal(a, b)
