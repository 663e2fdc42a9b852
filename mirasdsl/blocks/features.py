"""Feature maps φ, q/k norms, the short causal convolution and per-head output norms.

Order inside a mixer (documented once, used by every family):
``x → q, k, v projections → short conv → RoPE → φ(q), φ(k) → q/k norm → kernel``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirasdsl.spec.features import Features

COSFORMER_HORIZON = 4096  # cosFormer's M: angle π·t/(2M) at absolute position t


class FeatureMap(nn.Module):
    """φ applied to q or k ``[B, T, H, P] → [B, T, H, K]`` (K = state key dim)."""

    def __init__(self, features: Features, heads: int, proj_dim: int, seed: int = 0) -> None:
        super().__init__()
        fm = features.feature_map
        self.kind = fm.kind
        if fm.kind == "hedgehog":
            self.weight = nn.Parameter(torch.randn(heads, proj_dim, fm.dim) / math.sqrt(proj_dim))
        if fm.kind == "performer":
            gen = torch.Generator().manual_seed(seed)
            omega = torch.randn(heads, proj_dim, fm.features, generator=gen)  # [H, P, m]
            self.register_buffer("omega", omega, persistent=True)

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        kind = self.kind
        if kind == "identity":
            return x
        if kind == "elu1":
            return F.elu(x) + 1.0
        if kind == "relu":
            return torch.relu(x)
        if kind == "silu":
            return F.silu(x)
        if kind == "softmax":
            return torch.softmax(x, dim=-1)
        if kind == "cosformer":
            return self._cosformer(x, positions)
        if kind == "nala":
            return self._norm_aware(x)
        if kind == "mala":
            return self._magnitude_aware(x)
        if kind == "taylor2":
            return self._taylor2(x)
        if kind == "hedgehog":
            z = torch.einsum("bthp,hpm->bthm", x, self.weight)  # [B, T, H, m]
            return torch.cat([torch.softmax(z, -1), torch.softmax(-z, -1)], dim=-1)  # [B, T, H, 2m]
        if kind == "performer":
            return self._performer(x)
        raise ValueError(f"unknown feature map {kind!r}")

    @staticmethod
    def _taylor2(x: Tensor) -> Tensor:
        d = x.shape[-1]
        x = x / d ** 0.25  # [B, T, H, d]
        outer = (x[..., :, None] * x[..., None, :]).flatten(-2) / math.sqrt(2.0)  # [B, T, H, d²]
        ones = torch.ones_like(x[..., :1])  # [B, T, H, 1]
        return torch.cat([ones, x, outer], dim=-1)  # [B, T, H, 1 + d + d²]

    def _performer(self, x: Tensor) -> Tensor:
        m = self.omega.shape[-1]
        x = x / x.shape[-1] ** 0.25
        proj = torch.einsum("bthp,hpm->bthm", x, self.omega.to(x.dtype))  # [B, T, H, m]
        sq = 0.5 * (x * x).sum(-1, keepdim=True)  # [B, T, H, 1]
        return torch.exp((proj - sq).clamp(max=30.0)) / math.sqrt(m)  # positive features

    @staticmethod
    def _cosformer(x: Tensor, positions: Tensor | None) -> Tensor:
        T = x.shape[1]
        pos = positions if positions is not None else torch.arange(T, device=x.device)  # [T]
        angle = (math.pi / 2) * pos.to(x.dtype) / COSFORMER_HORIZON  # [T]
        r = torch.relu(x)  # [B, T, H, P]
        c, s = angle.cos()[None, :, None, None], angle.sin()[None, :, None, None]
        return torch.cat([r * c, r * s], dim=-1)  # [B, T, H, 2P]

    @staticmethod
    def _norm_aware(x: Tensor, power: float = 3.0) -> Tensor:
        """Our reading of NaLaFormer: keep ‖x‖, sharpen the direction with a power of relu(x)."""
        norm = x.norm(dim=-1, keepdim=True)  # [B, T, H, 1]
        d = torch.relu(x) ** power  # [B, T, H, P]
        return norm * d / (d.norm(dim=-1, keepdim=True) + 1e-6)

    @staticmethod
    def _magnitude_aware(x: Tensor) -> Tensor:
        """Our reading of MALA: relu features rescaled to carry the magnitude of x."""
        r = torch.relu(x)  # [B, T, H, P]
        return r * x.norm(dim=-1, keepdim=True) / (r.norm(dim=-1, keepdim=True) + 1e-6)


class QKNorm(nn.Module):
    """Per-head normalisation of q or k: ``l2`` (no parameters) or ``rms`` (learned scale, dim P)."""

    def __init__(self, kind: str, dim: int) -> None:
        super().__init__()
        self.kind = kind
        self.norm = nn.RMSNorm(dim, eps=1e-6) if kind == "rms" else None

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "l2":
            return F.normalize(x, dim=-1, eps=1e-6)
        if self.norm is not None:
            return self.norm(x)
        return x


class ShortConv(nn.Module):
    """Causal depthwise convolution over time; decoding keeps the last ``size − 1`` inputs."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        self.size = size
        self.weight = nn.Parameter(torch.randn(channels, 1, size) / math.sqrt(size))

    def forward(self, x: Tensor, cache: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x: [B, T, C]``, ``cache: [B, size−1, C]`` of earlier inputs → (y ``[B, T, C]``, new cache)."""
        B, T, C = x.shape
        if cache is None:
            cache = x.new_zeros(B, self.size - 1, C)
        full = torch.cat([cache.to(x.dtype), x], dim=1)  # [B, size−1+T, C]
        y = F.conv1d(full.transpose(1, 2), self.weight.to(x.dtype), groups=C)  # [B, C, T]
        return y.transpose(1, 2), full[:, full.shape[1] - (self.size - 1):]


class HeadNorm(nn.Module):
    """Norm of the read-out over the value dim of each head (weights shared across heads)."""

    def __init__(self, kind: str, dim: int) -> None:
        super().__init__()
        self.norm: nn.Module | None = None
        if kind == "rmsnorm":
            self.norm = nn.RMSNorm(dim, eps=1e-6)
        elif kind == "layernorm":
            self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, o: Tensor) -> Tensor:
        """Normalised in float32 (under autocast a kernel's bf16 output meets float32 weights)."""
        return self.norm(o.float()).to(o.dtype) if self.norm is not None else o
