"""Positions for softmax attention: rotary embeddings (RoPE) and ALiBi slopes.

RoPE, rotate-half convention (GPT-NeoX / LLaMA in Hugging Face form): the head dim ``D`` (even)
is split into halves ``x = [x1, x2]``; pair ``i`` is ``(x1[i], x2[i])`` and turns by the angle
``p * θ_i`` with ``θ_i = base^(-2i/D)``:

    rope(x, p) = [x1 cos(pθ) - x2 sin(pθ),  x2 cos(pθ) + x1 sin(pθ)]

Each pair is a 2-D rotation, so ``rope(q, t) · rope(k, s)`` depends on ``t - s`` only.
(The interleaved convention, pairs ``(x[2i], x[2i+1])``, is a fixed permutation of this one.)

ALiBi slopes (Press et al. 2022): for ``H`` a power of two, ``m_h = 2^(-8h/H)``, ``h = 1..H``.
Otherwise, with ``n = 2^floor(log2 H)``: the ``n`` slopes for ``n`` heads, then every other
slope of the ``2n``-head sequence (``2^(-8(2j-1)/(2n))``, ``j = 1..H-n``), as in the reference code.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def rope_frequencies(head_dim: int, positions: int | Tensor, base: float = 10000.0,
                     device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Return ``(cos, sin)`` of the rotation angles, float32, shape ``[*P, head_dim // 2]``.

    ``positions`` is a length ``T`` (positions ``0..T-1``) or a tensor of positions ``[*P]``
    (e.g. ``[T]`` or ``[B, T]``; float or integer).
    """
    if head_dim % 2 != 0:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
    if isinstance(positions, int):
        positions = torch.arange(positions, device=device)  # [T]
    half = head_dim // 2
    exponent = torch.arange(half, device=positions.device, dtype=torch.float64) * 2 / head_dim
    theta = (base ** -exponent).float()  # [D/2]
    angles = positions.float()[..., None] * theta  # [*P, D/2]
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, positions: Tensor | None = None, base: float = 10000.0) -> Tensor:
    """Rotate ``x: [B, T, H, D]`` by its positions (rotate-half convention), in x's dtype.

    ``positions``: None (``0..T-1``), ``[T]`` or ``[B, T]`` absolute positions.
    """
    B, T, H, D = x.shape
    if positions is None:
        positions = torch.arange(T, device=x.device)  # [T]
    if positions.shape[-1] != T or positions.dim() not in (1, 2):
        raise ValueError(f"positions must be [T] or [B, T] with T={T}, "
                         f"got {tuple(positions.shape)}")
    cos, sin = rope_frequencies(D, positions, base)  # [(B,) T, D/2]
    if cos.dim() == 2:
        cos, sin = cos[None], sin[None]  # [1, T, D/2]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # [B|1, T, 1, D/2]
    x1, x2 = x.float().chunk(2, dim=-1)  # [B, T, H, D/2] each
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)  # [B, T, H, D]
    return out.to(x.dtype)


def _power_of_two_slopes(n: int) -> list[float]:
    """``2^(-8h/n)`` for ``h = 1..n``."""
    return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]


def alibi_slopes(n_heads: int, device: torch.device | str | None = None) -> Tensor:
    """The standard ALiBi slopes ``m: [n_heads]`` (float32), largest first."""
    if n_heads < 1:
        raise ValueError(f"n_heads must be positive, got {n_heads}")
    n = 2 ** int(math.floor(math.log2(n_heads)))
    slopes = _power_of_two_slopes(n)
    if n < n_heads:
        slopes += _power_of_two_slopes(2 * n)[0::2][: n_heads - n]
    return torch.tensor(slopes, dtype=torch.float32, device=device)
