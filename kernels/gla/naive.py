"""Gated linear attention, the ground truth: the recurrence token by token, in float32.

    S_t = diag(exp(g_t)) S_{t-1} + k_t v_tᵀ        S: [K, V] per (batch, head)
    o_t = scale · S_tᵀ q_t

``g`` is None (no decay), ``[B, T, H]`` (one log-decay per head and token) or ``[B, T, H, K]``
(per channel). Conventions: ``kernels/README.md``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .common import (check_inputs, compute_dtype, default_scale, gate_per_channel,
                     sequence_bounds)


def _recurrence(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, scale: float,
                state: Tensor) -> tuple[Tensor, Tensor]:
    """One batch of sequences of equal length; inputs already in the compute dtype."""
    outputs = []
    for t in range(q.shape[1]):
        if g is not None:
            state = state * g[:, t].exp().unsqueeze(-1)  # [B, H, K, V]
        state = state + k[:, t].unsqueeze(-1) * v[:, t].unsqueeze(-2)  # [B, H, K, V]
        outputs.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, t], state))  # [B, H, V]
    o = torch.stack(outputs, dim=1) if outputs else v.new_zeros(v.shape)  # [B, T, H, V]
    return o, state


def recurrent_gla(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None,
                  scale: float | None = None, initial_state: Tensor | None = None,
                  output_final_state: bool = False,
                  cu_seqlens: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Token-by-token gated linear attention; returns ``(o [B, T, H, V], final_state | None)``.

    ``q, k: [B, T, H, K]``, ``v: [B, T, H, V]``, ``g: None | [B, T, H] | [B, T, H, K]`` (log
    decay, ``<= 0``), ``initial_state: [N, H, K, V]``, ``cu_seqlens: [N + 1]`` with ``B == 1``.
    """
    check_inputs(q, k, v, g, initial_state, cu_seqlens)
    B, T, H, K = q.shape
    V = v.shape[-1]
    dt = compute_dtype(q)
    out_dtype = v.dtype
    scale = default_scale(scale, K)
    g = gate_per_channel(g, K)
    q, k, v = q.to(dt), k.to(dt), v.to(dt)  # [B, T, H, K], [B, T, H, K], [B, T, H, V]
    g = None if g is None else g.to(dt)  # [B, T, H, K]
    bounds = [(0, T)] if cu_seqlens is None else sequence_bounds(cu_seqlens)
    n = B if cu_seqlens is None else len(bounds)
    h0 = (torch.zeros(n, H, K, V, dtype=dt, device=q.device) if initial_state is None
          else initial_state.to(dt))  # [N, H, K, V]
    if cu_seqlens is None:
        o, final = _recurrence(q, k, v, g, scale, h0)
    else:
        outs, finals = [], []
        for i, (bos, eos) in enumerate(bounds):
            gi = None if g is None else g[:, bos:eos]
            oi, si = _recurrence(q[:, bos:eos], k[:, bos:eos], v[:, bos:eos], gi, scale,
                                 h0[i:i + 1])
            outs.append(oi)
            finals.append(si)
        o, final = torch.cat(outs, dim=1), torch.cat(finals, dim=0)  # [1, T, H, V], [N, H, K, V]
    return o.to(out_dtype), (final if output_final_state else None)
