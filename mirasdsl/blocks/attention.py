"""Softmax-attention mixer: full or sliding window, RoPE or ALiBi, grouped-query heads, KV cache."""
from __future__ import annotations

import torch
from torch import Tensor

from mirasdsl.blocks.base import ProjectedMixer, State
from mirasdsl.graph.nodes import MixerNode
from mirasdsl.kernels.attention import alibi_slopes, attention


class AttentionMixer(ProjectedMixer):
    """Softmax memory: the KV cache is the state; a window keeps only the last ``window`` entries."""

    def __init__(self, node: MixerNode, layer_seed: int = 0) -> None:
        super().__init__(node, layer_seed)
        self.window = node.mixer.memory.window
        slopes = alibi_slopes(self.h) if node.mixer.features.position == "alibi" else None
        self.register_buffer("slopes", slopes, persistent=False)

    def forward(self, x: Tensor, state: State | None = None, return_state: bool = False) -> tuple[Tensor, State]:
        state = dict(state or {})
        q, k, v, _ = self.project(x, state)  # [B, T, H, P], [B, T, Hkv, P], [B, T, Hkv, V]
        if "k" in state:  # decoding / continued prefill: attend over cache + new tokens
            k = torch.cat([state["k"], k], dim=1)  # [B, S, Hkv, P]
            v = torch.cat([state["v"], v], dim=1)  # [B, S, Hkv, V]
        o = attention(q, k, v, causal=True, window=self.window, alibi_slopes=self.slopes)  # fp32 slopes  # [B, T, H, V]
        if return_state:
            keep = k.shape[1] if self.window is None else min(k.shape[1], self.window - 1)
            state["k"], state["v"] = k[:, k.shape[1] - keep:], v[:, v.shape[1] - keep:]
        return self.read_out(o, x), state
