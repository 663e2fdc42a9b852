"""Input checks and variable-length helpers shared by the delta-rule implementations."""
from __future__ import annotations

from typing import Callable

import torch

Tensor = torch.Tensor
Result = tuple[Tensor, Tensor | None]


def gate_mode(g: Tensor | None) -> int:
    """0: no gate, 1: one scalar per head and token ([B, T, H]), 2: per channel ([B, T, H, K])."""
    if g is None:
        return 0
    return 1 if g.dim() == 3 else 2


def check_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Tensor | None,
    initial_state: Tensor | None,
    cu_seqlens: Tensor | None,
) -> None:
    """Raise ``ValueError`` when the shapes do not follow kernels/README.md."""
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both be [B, T, H, K]; got {tuple(q.shape)}, {tuple(k.shape)}")
    b, t, h, dk = q.shape
    if v.dim() != 4 or v.shape[:3] != (b, t, h):
        raise ValueError(f"v must be [B, T, H, V] with B, T, H of q; got {tuple(v.shape)}")
    if beta.shape != (b, t, h):
        raise ValueError(f"beta must be [B, T, H] = {(b, t, h)}; got {tuple(beta.shape)}")
    if g is not None and g.shape not in ((b, t, h), (b, t, h, dk)):
        raise ValueError(f"g must be [B, T, H] or [B, T, H, K]; got {tuple(g.shape)}")
    n = b
    if cu_seqlens is not None:
        if b != 1:
            raise ValueError(f"cu_seqlens needs B == 1 (sequences packed along T); got B={b}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or int(cu_seqlens[-1]) != t:
            raise ValueError("cu_seqlens must be [N+1], start at 0 and end at T")
        n = cu_seqlens.numel() - 1
    if initial_state is not None and initial_state.shape != (n, h, dk, v.shape[-1]):
        raise ValueError(
            f"initial_state must be {(n, h, dk, v.shape[-1])}; got {tuple(initial_state.shape)}"
        )


def split_varlen(
    fn: Callable[..., Result],
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Tensor | None,
    initial_state: Tensor | None,
    output_final_state: bool,
    cu_seqlens: Tensor,
    **kwargs: object,
) -> Result:
    """Run ``fn`` on each packed sequence of a ``B == 1`` batch and join the results."""
    bounds = cu_seqlens.tolist()
    outs, finals = [], []
    for i, (t0, t1) in enumerate(zip(bounds[:-1], bounds[1:])):
        h0 = None if initial_state is None else initial_state[i : i + 1]  # [1, H, K, V]
        gi = None if g is None else g[:, t0:t1]
        o, s = fn(
            q[:, t0:t1], k[:, t0:t1], v[:, t0:t1], beta[:, t0:t1], gi,
            initial_state=h0, output_final_state=output_final_state, **kwargs,
        )
        outs.append(o)  # [1, T_i, H, V]
        finals.append(s)
    o = torch.cat(outs, dim=1)  # [1, T, H, V]
    final = torch.cat(finals, dim=0) if output_final_state else None  # [N, H, K, V]
    return o, final
