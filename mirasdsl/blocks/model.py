"""The module that executes a lowered graph, and its token-by-token decoding."""
from __future__ import annotations

from typing import Any

import networkx as nx
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirasdsl.blocks.parallel import ParallelMixer
from mirasdsl.blocks.registry import make_mixer
from mirasdsl.graph.lower import lower, nodes_in_order
from mirasdsl.graph.nodes import (
    ChannelMixerNode,
    EmbeddingNode,
    HeadNode,
    MixerNode,
    Node,
    NormNode,
    ParallelMixerNode,
    ResidualNode,
)
from mirasdsl.spec.model import Spec

ModelState = dict[str, Any]


class ChannelMixer(nn.Module):
    """SwiGLU (``W2 (silu(W1 x) ⊙ W3 x)``) or a GELU MLP, no biases."""

    def __init__(self, node: ChannelMixerNode) -> None:
        super().__init__()
        d, h = node.d_model, node.hidden
        self.swiglu = node.channel == "swiglu"
        self.w1 = nn.Linear(d, h, bias=False)
        self.w3 = nn.Linear(d, h, bias=False) if self.swiglu else None
        self.w2 = nn.Linear(h, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.w3 is not None:
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        return self.w2(F.gelu(self.w1(x)))


def _norm(node: NormNode) -> nn.Module:
    return nn.RMSNorm(node.dim, eps=1e-6) if node.norm == "rmsnorm" else nn.LayerNorm(node.dim, eps=1e-6)


def _key(node_id: str) -> str:
    return node_id.replace(".", "_")


class GraphModel(nn.Module):
    """Runs the nodes of a lowered graph in topological order; residual nodes sum their inputs."""

    def __init__(self, graph: nx.DiGraph) -> None:
        super().__init__()
        self.graph = graph
        self.order: list[Node] = nodes_in_order(graph)
        self.inputs = {n.id: list(graph.predecessors(n.id)) for n in self.order}
        self.blocks = nn.ModuleDict()
        self.embed: nn.Embedding | None = None
        for i, node in enumerate(self.order):
            block = self._block(node, seed=i)
            if block is not None:
                self.blocks[_key(node.id)] = block
        self.output_id = self.order[-1].id

    def _block(self, node: Node, seed: int) -> nn.Module | None:
        if isinstance(node, EmbeddingNode):
            self.embed = nn.Embedding(node.vocab_size, node.d_model)
            nn.init.normal_(self.embed.weight, std=node.d_model ** -0.5)
            return self.embed
        if isinstance(node, NormNode):
            return _norm(node)
        if isinstance(node, MixerNode):
            return make_mixer(node, seed)
        if isinstance(node, ParallelMixerNode):
            return ParallelMixer(node, lambda b: make_mixer(b, seed))
        if isinstance(node, ChannelMixerNode):
            return ChannelMixer(node)
        if isinstance(node, HeadNode):
            return None if node.tied else nn.Linear(node.d_model, node.vocab_size, bias=False)
        return None

    def run(self, tokens: Tensor, state: ModelState | None, return_state: bool) -> tuple[Tensor, ModelState]:
        """Logits ``[B, T, vocab]`` for ``tokens [B, T]`` continuing from ``state``."""
        values: dict[str, Tensor] = {}
        new_state: ModelState = {}
        for node in self.order:
            ins = [values[i] for i in self.inputs[node.id]]
            key = _key(node.id)
            if isinstance(node, EmbeddingNode):
                values[node.id] = self.embed(tokens)  # [B, T, d]
            elif isinstance(node, ResidualNode):
                values[node.id] = ins[0] + ins[1]
            elif isinstance(node, (MixerNode, ParallelMixerNode)):
                y, s = self.blocks[key](ins[0], (state or {}).get(node.id), return_state)
                values[node.id] = y
                new_state[node.id] = s
            elif isinstance(node, HeadNode):
                weight = self.embed.weight if node.tied else self.blocks[key].weight
                values[node.id] = F.linear(ins[0], weight)  # [B, T, vocab]
            else:
                values[node.id] = self.blocks[key](ins[0])
        return values[self.output_id], new_state

    def forward(self, tokens: Tensor) -> Tensor:
        """Training / scoring: logits ``[B, T, vocab]``."""
        return self.run(tokens, None, False)[0]

    def prefill(self, tokens: Tensor) -> tuple[Tensor, ModelState]:
        """Logits and the decoding state after ``tokens``."""
        return self.run(tokens, None, True)

    @torch.no_grad()
    def step(self, token: Tensor, state: ModelState | None = None) -> tuple[Tensor, ModelState]:
        """One decoding step: ``token [B]`` → logits ``[B, vocab]`` and the next state."""
        logits, new_state = self.run(token[:, None], state, True)
        return logits[:, 0], new_state


def build_model(spec: Spec) -> GraphModel:
    """Lower a spec and build its runnable module."""
    return GraphModel(lower(spec))
