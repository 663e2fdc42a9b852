"""Softmax attention: full or sliding window, causal or not, RoPE / ALiBi, GQA (see README.md)."""
from __future__ import annotations

from .decode import KVCache, attend_step
from .naive import naive_attention
from .rope import alibi_slopes, apply_rope, rope_frequencies
from .sdpa import attention, resolve_backend

__all__ = [
    "KVCache",
    "alibi_slopes",
    "apply_rope",
    "attend_step",
    "attention",
    "naive_attention",
    "resolve_backend",
    "rope_frequencies",
]
