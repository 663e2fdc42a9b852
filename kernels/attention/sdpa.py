"""Softmax attention, the fast path: PyTorch SDPA, or flex attention for windows and ALiBi.

Same arguments and semantics as :func:`naive.naive_attention` (layout ``[B, T, H, D]``, queries
bottom-right aligned against the keys, GQA by head groups). Backends:

- ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention``. Plain causal attention with
  ``S == T`` passes ``is_causal=True`` (FlashAttention on CUDA); a window is a boolean mask; ALiBi
  is a float32 additive bias (inputs are then computed in float32, because a bf16 bias of size
  ``m·|t - s|`` loses whole units of logit at long range).
- ``"flex"``: ``torch.nn.attention.flex_attention`` with a block-sparse causal/window mask and an
  ALiBi ``score_mod`` (scores are float32 inside); compiled on CUDA, eager (unfused, for tests)
  elsewhere.
- ``"naive"``: the float32 reference.
- ``None``: ``$MIRAS_KERNELS=naive`` gives the reference; otherwise ``flex`` on CUDA when there
  is a window or ALiBi, as many queries as keys, and flex attention exists; else ``sdpa``
  (decoding against a cache goes to SDPA: flex is compiled per shape). The generic dispatch
  names ``"chunk"`` and ``"triton"`` mean the same automatic choice.
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from .naive import (allowed, check_shapes, check_window, compute_dtype, naive_attention,
                    relative_distance)

try:  # flex attention appeared in torch 2.5
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # pragma: no cover - old torch
    create_block_mask = flex_attention = None

BACKENDS = ("naive", "sdpa", "flex")
_AUTO = (None, "chunk", "triton")


def resolve_backend(backend: str | None, device: torch.device, special: bool,
                    same_length: bool = True) -> str:
    """Pick ``naive``, ``sdpa`` or ``flex``.

    ``special``: a window or ALiBi is asked for. ``same_length``: as many queries as keys (a
    training or prefill call). The automatic choice sends only those calls to flex: decoding
    steps (few queries against a growing cache) would recompile flex at every new length.
    """
    if backend is None and os.environ.get("MIRAS_KERNELS") == "naive":
        return "naive"
    if backend in _AUTO:
        if special and same_length and device.type == "cuda" and flex_attention is not None:
            return "flex"
        return "sdpa"
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; allowed: "
                         f"{', '.join(BACKENDS)} or None")
    if backend == "flex" and flex_attention is None:
        raise ValueError("backend 'flex' needs torch.nn.attention.flex_attention (torch >= 2.5)")
    return backend


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, window: int | None = None,
              alibi_slopes: Tensor | None = None, scale: float | None = None,
              backend: str | None = None) -> Tensor:
    """Softmax attention ``o: [B, T, H, V]`` (v's dtype); see the module docstring for backends.

    ``q: [B, T, H, D]``, ``k: [B, S, H_kv, D]``, ``v: [B, S, H_kv, V]``, ``S >= T``,
    ``H % H_kv == 0``; ``window`` counts keys including the current one; ``alibi_slopes: [H]``.
    """
    check_shapes(q, k, v, alibi_slopes)
    check_window(window)
    special = window is not None or alibi_slopes is not None
    choice = resolve_backend(backend, q.device, special, q.shape[1] == k.shape[1])
    if choice == "naive":
        return naive_attention(q, k, v, causal, window, alibi_slopes, scale)
    if choice == "flex":
        return _flex(q, k, v, causal, window, alibi_slopes, scale)
    return _sdpa(q, k, v, causal, window, alibi_slopes, scale)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, causal: bool, window: int | None,
          alibi_slopes: Tensor | None, scale: float | None) -> Tensor:
    """SDPA in ``[B, H, T, D]``; a mask only where ``is_causal`` cannot say it."""
    T, H, S = q.shape[1], q.shape[2], k.shape[1]
    gqa = k.shape[2] != H
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # [B, H|H_kv, T|S, D]
    mask = None
    plain_causal = causal and window is None and alibi_slopes is None and S == T
    if not plain_causal:
        dist = relative_distance(T, S, q.device)  # [T, S]
        mask = allowed(dist, causal, window)  # [T, S] bool
        if alibi_slopes is not None:
            dt = compute_dtype(q)
            bias = -alibi_slopes.to(dt)[:, None, None] * dist.abs()  # [H, T, S]
            mask = bias.masked_fill(~mask, float("-inf"))  # [H, T, S] float32 (or 64)
            qt, kt, vt = qt.to(dt), kt.to(dt), vt.to(dt)
    o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, is_causal=plain_causal,
                                       scale=scale, enable_gqa=gqa)  # [B, H, T, V]
    return o.transpose(1, 2).to(v.dtype)  # [B, T, H, V]


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    """``torch.compile(flex_attention)``, made once (the fused kernel needs compilation)."""
    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=32)
def _block_mask(T: int, S: int, causal: bool, window: int | None, device: str):
    """Flex block mask for queries bottom-right aligned on keys; None when nothing is masked."""
    if not causal and window is None:
        return None
    offset = S - T

    def mask_mod(b, h, q_idx, kv_idx):
        dist = q_idx + offset - kv_idx
        keep = dist >= 0 if causal else dist > -S
        if window is not None:
            keep = keep & (dist < window) & (dist > -window)
        return keep

    return create_block_mask(mask_mod, None, None, T, S, device=device)


def _alibi_score_mod(slopes: Tensor, offset: int):
    """Score modification adding ``-m_h |t - s|`` to each float32 logit."""
    def score_mod(score, b, h, q_idx, kv_idx):
        dist = (q_idx + offset - kv_idx).abs()
        return score - slopes[h] * dist
    return score_mod


def _flex(q: Tensor, k: Tensor, v: Tensor, causal: bool, window: int | None,
          alibi_slopes: Tensor | None, scale: float | None) -> Tensor:
    """Flex attention in ``[B, H, T, D]`` with a block mask and an ALiBi score_mod."""
    T, H, S = q.shape[1], q.shape[2], k.shape[1]
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # [B, H|H_kv, T|S, D]
    block_mask = _block_mask(T, S, causal, window, str(q.device))
    score_mod = None
    if alibi_slopes is not None:
        score_mod = _alibi_score_mod(alibi_slopes.float().to(q.device), S - T)
    fn = _compiled_flex() if q.is_cuda else flex_attention
    o = fn(qt, kt, vt, score_mod=score_mod, block_mask=block_mask, scale=scale,
           enable_gqa=k.shape[2] != H)  # [B, H, T, V]
    return o.transpose(1, 2).to(v.dtype)  # [B, T, H, V]
