"""Input checks and small helpers shared by the gated linear attention backends."""
from __future__ import annotations

import torch
from torch import Tensor


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64 (for gradient checks); everything else is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_inputs(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None,
                 initial_state: Tensor | None, cu_seqlens: Tensor | None) -> None:
    """Raise ``ValueError`` unless the inputs follow ``kernels/README.md``."""
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k must be [B, T, H, K] and v [B, T, H, V]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, T, H, K = q.shape
    if g is not None and tuple(g.shape) not in ((B, T, H), (B, T, H, K)):
        raise ValueError(f"g must be [B, T, H] or [B, T, H, K] = {(B, T, H, K)}; "
                         f"got {tuple(g.shape)}")
    n = B
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"cu_seqlens needs B == 1 (sequences packed along T); got B={B}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError("cu_seqlens must be a 1-D LongTensor [N + 1]")
        if int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != T:
            raise ValueError(f"cu_seqlens must start at 0 and end at T={T}")
        if bool((cu_seqlens[1:] < cu_seqlens[:-1]).any()):
            raise ValueError("cu_seqlens must be non-decreasing")
        n = cu_seqlens.numel() - 1
    if initial_state is not None and tuple(initial_state.shape) != (n, H, K, v.shape[-1]):
        raise ValueError(f"initial_state must be [{n}, {H}, {K}, {v.shape[-1]}]; "
                         f"got {tuple(initial_state.shape)}")


def gate_per_channel(g: Tensor | None, K: int) -> Tensor | None:
    """``[B, T, H]`` scalar gates broadcast to ``[B, T, H, K]``; per-channel gates and None pass."""
    if g is None or g.dim() == 4:
        return g
    return g.unsqueeze(-1).expand(*g.shape, K)  # [B, T, H, K]


def default_scale(scale: float | None, K: int) -> float:
    """``scale`` defaults to ``K ** -0.5``."""
    return K ** -0.5 if scale is None else float(scale)


def sequence_bounds(cu_seqlens: Tensor) -> list[tuple[int, int]]:
    """``[(bos, eos), ...]`` for each packed sequence."""
    cu = cu_seqlens.tolist()
    return list(zip(cu[:-1], cu[1:]))
