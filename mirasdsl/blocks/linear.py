"""Linear-recurrence mixers: the gated linear attention and gated delta rule families.

Vector memory runs on the same kernels with one 1×1 state per channel (``[B, T, H·V, 1]``).
The linear-attention denominator ``φ(q)ᵀΣφ(k)`` is computed by appending a ones column to v.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mirasdsl.blocks.base import ProjectedMixer, State
from mirasdsl.kernels.delta import delta_rule
from mirasdsl.kernels.gla import gated_linear_attention
from mirasdsl.spec.families import DELTA

DENOM_EPS = 1e-6


class LinearMixer(ProjectedMixer):
    """Matrix (or vector) memory with dot-product or L2 bias and any linear gate."""

    def forward(self, x: Tensor, state: State | None = None, return_state: bool = False) -> tuple[Tensor, State]:
        state = dict(state or {})
        q, k, v, _ = self.project(x, state)  # [B, T, H, K], [B, T, H, K], [B, T, H, V]
        beta = self.gates.step(x)  # [B, T, H] or None
        g = self.gates.log_decay(x)  # None, [B, T, H] or [B, T, H, K]
        m = self.node.mixer
        denominator = m.features.normalize == "denominator"
        if denominator:
            v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # [B, T, H, V+1]
        vector = m.memory.kind == "vector"
        if vector:
            q, k, v, g, beta = _per_channel(q, k, v, g, beta)
        o, final = self._kernel(q, k, v, beta, g, state.get("S"), return_state)
        if vector:
            o = o.reshape(x.shape[0], x.shape[1], self.h, self.v)  # [B, T, H, V]
        if denominator:
            o = o[..., :-1] / (o[..., -1:] + DENOM_EPS)  # [B, T, H, V]
        if return_state:
            state["S"] = final
        return self.read_out(o, x), state

    def _kernel(self, q: Tensor, k: Tensor, v: Tensor, beta: Tensor | None, g: Tensor | None,
                s0: Tensor | None, return_state: bool) -> tuple[Tensor, Tensor | None]:
        scale = 1.0 if self.node.mixer.memory.kind == "vector" else None
        if self.node.family == DELTA:
            if beta is None:
                beta = torch.ones_like(q[..., 0])  # [B, T, H]: fixed step 1
            if self.node.mixer.update.kind == "implicit":  # Longhorn: ε = β / (1 + β‖k‖²)
                beta = beta / (1.0 + beta * (k.float() * k.float()).sum(-1).to(beta.dtype))
            return delta_rule(q, k, v, beta, g, scale=scale, initial_state=s0, output_final_state=return_state)
        if beta is not None:
            k = k * beta[..., None]  # data-dependent step scales the write (Mamba2's Δ)
        return gated_linear_attention(q, k, v, g, scale=scale, initial_state=s0, output_final_state=return_state)


def _per_channel(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, beta: Tensor | None):
    """Vector memory: every channel of every head becomes its own 1×1 state."""
    B, T, H, V = v.shape
    flat = lambda t: t.reshape(B, T, H * t.shape[-1], 1)  # noqa: E731
    if g is not None:
        g = g.expand(B, T, H, V) if g.dim() == 4 else g[..., None].expand(B, T, H, V)
        g = g.reshape(B, T, H * V)  # [B, T, H·V]
    if beta is not None:
        beta = beta[..., None].expand(B, T, H, V).reshape(B, T, H * V)  # [B, T, H·V]
    return flat(q), flat(k), flat(v), g, beta
