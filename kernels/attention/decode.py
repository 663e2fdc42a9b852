"""One decoding step of softmax attention against a KV cache.

Two cache forms, both consistent with the full forward (:func:`attention`) at every position:

- a *contiguous* cache ``k_cache, v_cache: [B, L, H_kv, D]`` whose last entry is the current
  token (append first, then attend); entry ``j`` is ``L - 1 - j`` tokens back. A sliding window
  needs only the last ``w`` entries (a truncated cache), but a longer cache is masked correctly.
- a *ring buffer* (:class:`KVCache`): ``capacity`` slots, token ``p`` written at slot
  ``p % capacity``, each slot's absolute position kept in ``positions`` (``-1`` = empty). A
  window ``w`` needs ``capacity >= w``; full attention needs ``capacity >=`` the whole length.

ALiBi adds ``-m_h (t - s)`` with ``t - s`` measured in absolute positions, so the bias is right
however the slots are laid out. RoPE is applied by the caller, to q and k, before caching.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .naive import check_window, compute_dtype


def attend_step(q_t: Tensor, k_cache: Tensor, v_cache: Tensor, window: int | None = None,
                alibi_slopes: Tensor | None = None, scale: float | None = None,
                cache_positions: Tensor | None = None, position: int | None = None) -> Tensor:
    """Attention output ``o_t: [B, 1, H, V]`` (v's dtype) of one query against a cache.

    ``q_t: [B, 1, H, D]``; ``k_cache: [B, L, H_kv, D]``; ``v_cache: [B, L, H_kv, V]``.
    Without ``cache_positions`` the cache is contiguous and ends at the current token; with
    ``cache_positions: [L]`` (long, ``-1`` for empty slots) ``position`` is the query's absolute
    position and only slots at positions ``<= position`` are read.
    """
    check_window(window)
    B, one, H, D = q_t.shape
    L, Hkv = k_cache.shape[1], k_cache.shape[2]
    if one != 1 or H % Hkv != 0:
        raise ValueError(f"q_t must be [B, 1, H, D] with H a multiple of H_kv={Hkv}")
    scale = D ** -0.5 if scale is None else scale
    if cache_positions is None:
        dist = torch.arange(L - 1, -1, -1, device=q_t.device)  # [L]
        keep = torch.ones(L, dtype=torch.bool, device=q_t.device)  # [L]
    else:
        if position is None:
            raise ValueError("a cache with cache_positions needs the query's position")
        dist = position - cache_positions.to(q_t.device)  # [L]
        keep = (cache_positions.to(q_t.device) >= 0) & (dist >= 0)  # [L]
    if window is not None:
        keep = keep & (dist < window)
    dt = compute_dtype(q_t)
    qg = q_t.to(dt).reshape(B, Hkv, H // Hkv, D)  # [B, H_kv, G, D]
    logits = torch.einsum("bngd,blnd->bngl", qg, k_cache.to(dt)) * scale  # [B, H_kv, G, L]
    logits = logits.reshape(B, H, L)  # [B, H, L]
    if alibi_slopes is not None:
        logits = logits - alibi_slopes.to(dt)[:, None] * dist.to(dt)  # [B, H, L]
    probs = torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)  # [B, H, L]
    pg = probs.reshape(B, Hkv, H // Hkv, L)  # [B, H_kv, G, L]
    o = torch.einsum("bngl,blnv->bngv", pg, v_cache.to(dt))  # [B, H_kv, G, V]
    return o.reshape(B, 1, H, -1).to(v_cache.dtype)  # [B, 1, H, V]


@dataclass
class KVCache:
    """A ring-buffer KV cache (mutable decoding state, not a config)."""

    keys: Tensor  # [B, C, H_kv, D]
    values: Tensor  # [B, C, H_kv, V]
    positions: Tensor  # [C] long, absolute position held by each slot, -1 when empty
    length: int = 0  # tokens appended so far (= the next token's absolute position)

    @classmethod
    def empty(cls, batch: int, capacity: int, kv_heads: int, head_dim: int,
              value_dim: int | None = None, device: torch.device | str | None = None,
              dtype: torch.dtype = torch.float32) -> "KVCache":
        """An empty cache of ``capacity`` slots."""
        value_dim = head_dim if value_dim is None else value_dim
        keys = torch.zeros(batch, capacity, kv_heads, head_dim, device=device, dtype=dtype)
        values = torch.zeros(batch, capacity, kv_heads, value_dim, device=device, dtype=dtype)
        positions = torch.full((capacity,), -1, dtype=torch.long, device=device)
        return cls(keys, values, positions)

    @property
    def capacity(self) -> int:
        """Number of slots."""
        return self.keys.shape[1]

    def append(self, k_t: Tensor, v_t: Tensor) -> None:
        """Write the next token's ``k_t: [B, 1, H_kv, D]``, ``v_t: [B, 1, H_kv, V]``."""
        slot = self.length % self.capacity
        self.keys[:, slot] = k_t[:, 0]  # [B, H_kv, D]
        self.values[:, slot] = v_t[:, 0]  # [B, H_kv, V]
        self.positions[slot] = self.length
        self.length += 1

    def attend(self, q_t: Tensor, window: int | None = None,
               alibi_slopes: Tensor | None = None, scale: float | None = None) -> Tensor:
        """Attend the newest token's query ``q_t: [B, 1, H, D]``; returns ``[B, 1, H, V]``."""
        if self.length == 0:
            raise ValueError("append the current token's key and value before attending")
        reach = self.length if window is None else min(window, self.length)
        if reach > self.capacity:
            raise ValueError(f"the cache holds {self.capacity} tokens but attention needs the "
                             f"last {reach}: make the capacity at least the window (or length)")
        return attend_step(q_t, self.keys, self.values, window, alibi_slopes, scale,
                           cache_positions=self.positions, position=self.length - 1)
