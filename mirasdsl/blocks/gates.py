"""Data-dependent scalars of a mixer: step β, decay α (log space), momentum μ, weight decay λ, Huber δ.

Parameterisations (one ``Linear(d, heads)`` with bias per scalar, in the order
``cost.mixers.scalar_gates`` lists them, so parameter counts match the cost model exactly):
- step β_t = σ(W x + b); decay ``softplus``: g = −exp(A_log)·softplus(W x + b) (Mamba2),
  ``sigmoid``: g = log σ(W x + b)/τ with τ = 16 (GLA); per-channel gates use a rank-r
  projection ``Linear(d, r) → Linear(r, H·K)`` (bias on the second);
- constant decay: a buffer ``log γ_h`` (one γ, or RetNet's ``γ_h = 1 − 2^{−5−h}``);
- momentum μ_t, weight decay λ_t = σ(W x + b); Huber δ_t = softplus(W x + b).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirasdsl.cost.mixers import scalar_gates
from mirasdsl.graph.nodes import MixerNode

GLA_TAU = 16.0


def _linear(d: int, h: int, bias_init: float = 0.0) -> nn.Linear:
    lin = nn.Linear(d, h, bias=True)
    nn.init.normal_(lin.weight, std=d ** -0.5 * 0.1)
    nn.init.constant_(lin.bias, bias_init)
    return lin


class Gates(nn.Module):
    """Every data-dependent (or constant) scalar the mixer's tuple asks for."""

    def __init__(self, node: MixerNode) -> None:
        super().__init__()
        m, d, h = node.mixer, node.d_model, node.heads
        self.heads, self.state_dim = h, node.state_dim
        local = m.retention.local
        self.local_kind = local.kind
        self.channel = local.kind == "gated" and local.granularity == "channel"
        self.param = getattr(local, "parameterization", "softplus")
        self.scalars = nn.ModuleDict()
        inits = {"step": 0.0, "decay": math.log(math.expm1(0.01)), "momentum": 2.0,
                 "weight_decay": -4.0, "huber_delta": 0.5}
        for name in scalar_gates(node):
            self.scalars[name] = _linear(d, h, inits[name])
        if self.channel:
            self.down = nn.Linear(d, local.rank, bias=False)
            self.up = _linear(local.rank, h * node.state_dim, 4.0 if self.param == "sigmoid" else -4.0)
        if local.kind == "gated" and self.param == "softplus":
            self.A_log = nn.Parameter(torch.log(torch.empty(h).uniform_(1.0, 16.0)))
        if local.kind == "constant":
            gamma = torch.tensor([local.decay] * h) if local.decay else 1 - 2.0 ** (-5.0 - torch.arange(h))
            self.register_buffer("log_gamma", torch.log(gamma.float()), persistent=False)

    def scalar(self, name: str, x: Tensor) -> Tensor | None:
        """``[B, T, H]`` activation-free pre-gate, or None when the tuple has no such scalar."""
        return self.scalars[name](x) if name in self.scalars else None

    def step(self, x: Tensor) -> Tensor | None:
        z = self.scalar("step", x)
        return torch.sigmoid(z) if z is not None else None

    def log_decay(self, x: Tensor) -> Tensor | None:
        """g = log α: None, ``[B, T, H]`` or ``[B, T, H, K]`` (per channel)."""
        B, T, _ = x.shape
        if self.local_kind == "none":
            return None
        if self.local_kind == "constant":
            return self.log_gamma.to(x.dtype).expand(B, T, self.heads)  # [B, T, H]
        if self.channel:
            z = self.up(self.down(x)).view(B, T, self.heads, self.state_dim)  # [B, T, H, K]
        else:
            z = self.scalar("decay", x)  # [B, T, H]
        if self.param == "sigmoid":
            return F.logsigmoid(z) / GLA_TAU
        a = torch.exp(self.A_log.to(z.dtype))  # [H]
        a = a[:, None] if z.dim() == 4 else a
        return -a * F.softplus(z)

    def momentum(self, x: Tensor) -> Tensor | None:
        z = self.scalar("momentum", x)
        return torch.sigmoid(z) if z is not None else None

    def weight_decay(self, x: Tensor) -> Tensor | None:
        z = self.scalar("weight_decay", x)
        return torch.sigmoid(z) if z is not None else None

    def huber_delta(self, x: Tensor) -> Tensor | None:
        z = self.scalar("huber_delta", x)
        return F.softplus(z) + 1e-3 if z is not None else None
