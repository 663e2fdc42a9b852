"""What every token mixer shares: projections, short conv, RoPE, φ, q/k norm, output norm and gate.

A mixer's ``forward(x, state=None)`` returns ``(y, new_state)``; the same call with ``T = 1``
and the previous state is one decoding step. ``state`` is a dict (``pos``: tokens seen so far,
``conv``: the short-conv cache, and the family's own entries).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirasdsl.blocks.features import FeatureMap, HeadNorm, QKNorm, ShortConv
from mirasdsl.blocks.gates import Gates
from mirasdsl.graph.nodes import MixerNode
from mirasdsl.kernels.attention import apply_rope

State = dict[str, Any]


class ProjectedMixer(nn.Module):
    """Base class: turns ``x [B, T, d]`` into per-head q, k, v and a read-out back into ``[B, T, d]``."""

    def __init__(self, node: MixerNode, layer_seed: int = 0) -> None:
        super().__init__()
        m, d = node.mixer, node.d_model
        self.node = node
        self.h, self.kv, self.p, self.v = node.heads, node.kv_heads, node.proj_dim, node.value_dim
        f = m.features
        self.q_proj = nn.Linear(d, self.h * self.p, bias=False)
        self.k_proj = nn.Linear(d, self.kv * self.p, bias=False)
        self.v_proj = nn.Linear(d, self.kv * self.v, bias=False)
        self.o_proj = nn.Linear(self.h * self.v, d, bias=False)
        self.gate_proj = nn.Linear(d, self.h * self.v, bias=False) if f.output_gate != "none" else None
        self.conv = ShortConv(self.h * self.p + self.kv * (self.p + self.v), f.short_conv) if f.short_conv else None
        self.gates = Gates(node)
        self.phi_q = FeatureMap(f, self.h, self.p, seed=layer_seed)
        self.phi_k = self.phi_q if f.feature_map.kind != "hedgehog" else FeatureMap(f, self.h, self.p)
        self.q_norm = QKNorm(f.qk_norm, self.p)
        self.k_norm = QKNorm(f.qk_norm, self.p)
        self.out_norm = HeadNorm(f.output_norm, self.v)
        self.features = f

    def project(self, x: Tensor, state: State) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """q ``[B,T,H,K]``, k ``[B,T,Hkv,K]``, v ``[B,T,Hkv,V]`` after conv, RoPE, φ and norm; positions ``[T]``."""
        B, T, _ = x.shape
        qkv = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)  # [B, T, C]
        if self.conv is not None:
            qkv, state["conv"] = self.conv(qkv, state.get("conv"))
        q, k, v = qkv.split([self.h * self.p, self.kv * self.p, self.kv * self.v], dim=-1)
        q = q.view(B, T, self.h, self.p)  # [B, T, H, P]
        k = k.view(B, T, self.kv, self.p)  # [B, T, Hkv, P]
        v = v.view(B, T, self.kv, self.v)  # [B, T, Hkv, V]
        start = state.get("pos", 0)
        positions = torch.arange(start, start + T, device=x.device)  # [T]
        if self.features.position == "rope":
            q = apply_rope(q, positions, self.features.rope_base)
            k = apply_rope(k, positions, self.features.rope_base)
        q = self.q_norm(self.phi_q(q, positions))  # [B, T, H, K]
        k = self.k_norm(self.phi_k(k, positions))  # [B, T, Hkv, K]
        state["pos"] = start + T
        return q, k, v, positions

    def read_out(self, o: Tensor, x: Tensor) -> Tensor:
        """``o [B, T, H, V]`` → output norm → output gate → ``o_proj`` → ``[B, T, d]``."""
        B, T = o.shape[:2]
        o = self.out_norm(o).reshape(B, T, self.h * self.v)  # [B, T, H·V]
        if self.gate_proj is not None:
            gate = self.gate_proj(x)  # [B, T, H·V]
            o = o * (F.silu(gate) if self.features.output_gate == "swish" else torch.sigmoid(gate))
        return self.o_proj(o)
