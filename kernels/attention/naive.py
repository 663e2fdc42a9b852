"""Softmax attention, the PyTorch ground truth: explicit float32 logits, mask, softmax.

Layout ``[B, T, H, D]`` (see ``kernels/README.md``). Keys and values may have fewer heads than
the queries (grouped-query attention): query head ``h`` reads key/value head
``h // (H // H_kv)``.

Positions: the ``T`` queries are the *last* ``T`` of the ``S`` key positions (bottom-right
alignment), so query ``i`` sits at absolute position ``t = i + S - T`` and key ``j`` at ``s = j``.
With ``S == T`` this is the usual ``t = i``.

- ``causal``: query ``t`` sees keys ``s <= t``.
- ``window = w``: additionally ``t - s < w`` (so ``s`` in ``[t - w + 1, t]``, ``w`` keys counting
  itself); without ``causal`` the window is two-sided, ``|t - s| < w``.
- ``alibi_slopes = m [H]``: adds ``-m_h * |t - s|`` to the logits (``-m_h (t - s)`` when causal).
"""
from __future__ import annotations

import torch
from torch import Tensor


def check_shapes(q: Tensor, k: Tensor, v: Tensor, alibi_slopes: Tensor | None) -> None:
    """Raise ``ValueError`` unless q, k, v (and slopes) fit the attention conventions."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, T, H, D]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, T, H, D = q.shape
    Bk, S, Hkv, Dk = k.shape
    if (Bk, S, Hkv) != tuple(v.shape[:3]) or Bk != B or Dk != D:
        raise ValueError(f"shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if H % Hkv != 0:
        raise ValueError(f"query heads ({H}) must be a multiple of key/value heads ({Hkv})")
    if S < T:
        raise ValueError(f"fewer keys ({S}) than queries ({T}): queries are the last T keys")
    if alibi_slopes is not None and tuple(alibi_slopes.shape) != (H,):
        raise ValueError(f"alibi_slopes must be [H={H}], got {tuple(alibi_slopes.shape)}")


def check_window(window: int | None) -> None:
    """A window counts tokens, the current one included: it must be a positive integer."""
    if window is not None and (not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be a positive integer or None, got {window!r}")


def repeat_kv(x: Tensor, n_heads: int) -> Tensor:
    """Expand ``[B, S, H_kv, D]`` to ``[B, S, n_heads, D]``: head h reads kv head h // group."""
    group = n_heads // x.shape[2]
    return x if group == 1 else x.repeat_interleave(group, dim=2)  # [B, S, H, D]


def relative_distance(T: int, S: int, device: torch.device) -> Tensor:
    """``t - s`` for every query (rows, bottom-right aligned) and key (columns): ``[T, S]``."""
    t = torch.arange(S - T, S, device=device)  # [T] absolute query positions
    s = torch.arange(S, device=device)  # [S]
    return t[:, None] - s[None, :]  # [T, S]


def allowed(dist: Tensor, causal: bool, window: int | None) -> Tensor:
    """Boolean mask over ``dist = t - s``: which keys each query may read."""
    keep = torch.ones_like(dist, dtype=torch.bool)  # [..., T, S]
    if causal:
        keep &= dist >= 0
    if window is not None:
        keep &= dist.abs() < window
    return keep


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64 (for gradient checks); everything else is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def naive_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True,
                    window: int | None = None, alibi_slopes: Tensor | None = None,
                    scale: float | None = None) -> Tensor:
    """Softmax attention by its definition, in float32 (float64 for float64 inputs).

    Returns ``o: [B, T, H, V]`` in v's dtype.

    ``q: [B, T, H, D]``, ``k: [B, S, H_kv, D]``, ``v: [B, S, H_kv, V]``, ``S >= T``;
    ``alibi_slopes: [H]`` or None; ``scale`` defaults to ``D ** -0.5``.
    """
    check_shapes(q, k, v, alibi_slopes)
    check_window(window)
    B, T, H, D = q.shape
    S = k.shape[1]
    scale = D ** -0.5 if scale is None else scale
    dt = compute_dtype(q)
    kf = repeat_kv(k, H).to(dt)  # [B, S, H, D]
    vf = repeat_kv(v, H).to(dt)  # [B, S, H, V]
    logits = torch.einsum("bthd,bshd->bhts", q.to(dt), kf) * scale  # [B, H, T, S]
    dist = relative_distance(T, S, q.device)  # [T, S]
    if alibi_slopes is not None:
        logits = logits - alibi_slopes.to(dt)[:, None, None] * dist.abs()  # [B, H, T, S]
    keep = allowed(dist, causal, window)  # [T, S]
    logits = logits.masked_fill(~keep, float("-inf"))  # [B, H, T, S]
    probs = torch.softmax(logits, dim=-1)  # [B, H, T, S]
    o = torch.einsum("bhts,bshv->bthv", probs, vf)  # [B, T, H, V]
    return o.to(v.dtype)
