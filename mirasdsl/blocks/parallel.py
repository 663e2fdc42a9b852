"""Intra-layer hybrid: branch mixers on the same input, combined by sum (BASED) or a gate (Titans MAG)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from mirasdsl.blocks.base import State
from mirasdsl.graph.nodes import ParallelMixerNode


class ParallelMixer(nn.Module):
    """``y = Σ_b y_b`` or ``y = σ(W x + b) ⊙ y_1 + (1 − σ(W x + b)) ⊙ y_2``."""

    def __init__(self, node: ParallelMixerNode, make_mixer) -> None:
        super().__init__()
        self.node = node
        self.branches = nn.ModuleDict({b.name: make_mixer(b) for b in node.branches})
        self.gate = nn.Linear(node.d_model, node.d_model, bias=True) if node.combine == "gate" else None

    def forward(self, x: Tensor, state: State | None = None, return_state: bool = False) -> tuple[Tensor, State]:
        state = dict(state or {})
        outs = []
        for name, mixer in self.branches.items():
            y, state[name] = mixer(x, state.get(name), return_state)
            outs.append(y)
        if self.gate is None:
            return torch.stack(outs).sum(0), state
        s = torch.sigmoid(self.gate(x))  # [B, T, d]
        return s * outs[0] + (1 - s) * outs[1], state
