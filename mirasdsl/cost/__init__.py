"""The analytic cost model: every node declares its cost; the report sums them.

Parameters exact; FLOPs per token at a context (forward counted as matmul FLOPs, training as
3× forward: backward ≈ 2× forward); recurrent state per sequence; KV cache at a context;
activation memory of a training step at (batch, seq_len). See cost/mixers.py for conventions.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import networkx as nx

from mirasdsl.cost import mixers as mx
from mirasdsl.graph.lower import lower, nodes_in_order
from mirasdsl.graph.nodes import (
    ChannelMixerNode,
    EmbeddingNode,
    HeadNode,
    MixerNode,
    Node,
    NormNode,
    ParallelMixerNode,
)
from mirasdsl.spec.model import Spec

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
TRAIN_FACTOR = 3.0


@dataclass(frozen=True)
class Cost:
    """The cost of one node, or of a sum of nodes."""

    params: int = 0
    fwd_flops: float = 0.0  # per token
    train_flops: float = 0.0  # per token
    state_bytes: float = 0.0  # per sequence, constant in context
    kv_bytes_per_token: float = 0.0  # per sequence, growth of the cache per token at this context
    kv_bytes: float = 0.0  # per sequence, held at the context
    activation_bytes: float = 0.0  # for the whole training step (batch × seq_len)

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def cache_bytes(self, batch: int = 1) -> float:
        """Decode memory: constant state plus the KV cache, for ``batch`` sequences."""
        return batch * (self.state_bytes + self.kv_bytes)


@dataclass(frozen=True)
class Settings:
    """Where costs are evaluated."""

    context: int = 4096  # FLOPs per token and KV cache are taken at this sequence length
    batch: int = 1  # activation memory of a training step
    seq_len: int = 4096
    dtype: str = "bf16"  # activations and KV cache; recurrent state is fp32


def _norm_params(node: NormNode) -> int:
    return node.dim * (2 if node.norm == "layernorm" else 1)


def _mixer_cost(n: MixerNode, s: Settings) -> Cost:
    nb = DTYPE_BYTES[s.dtype]
    fwd = mx.mixer_fwd_flops(n, s.context)
    per_tok, held = mx.kv_bytes(n, s.context, nb)
    return Cost(mx.mixer_params(n), fwd, TRAIN_FACTOR * fwd, mx.state_bytes(n), per_tok, held,
                mx.activation_bytes(n, s.batch, s.seq_len, nb))


def node_cost(node: Node, s: Settings) -> Cost:
    """Cost of one node (formulas written here and in cost/mixers.py)."""
    nb = DTYPE_BYTES[s.dtype]
    tokens = s.batch * s.seq_len
    if isinstance(node, MixerNode):
        return _mixer_cost(node, s)
    if isinstance(node, ParallelMixerNode):
        total = sum((_mixer_cost(b, s) for b in node.branches), Cost())
        if node.combine == "gate":  # sigmoid(Linear(d, d)) mixes the two branches
            d = node.d_model
            total += Cost(d * d + d, 2.0 * d * d, TRAIN_FACTOR * 2.0 * d * d, 0, 0, 0, tokens * 3 * d * nb)
        return total
    if isinstance(node, EmbeddingNode):
        return Cost(params=node.vocab_size * node.d_model)
    if isinstance(node, NormNode):
        return Cost(params=_norm_params(node), activation_bytes=tokens * node.dim * nb)
    if isinstance(node, ChannelMixerNode):
        mats = 3 if node.channel == "swiglu" else 2
        w = mats * node.d_model * node.hidden
        act = tokens * (node.d_model + mats * node.hidden) * nb
        return Cost(w, 2.0 * w, TRAIN_FACTOR * 2.0 * w, activation_bytes=act)
    if isinstance(node, HeadNode):
        w = node.vocab_size * node.d_model
        act = tokens * (node.d_model + 2 * node.vocab_size) * nb  # input, logits and their grad
        return Cost(0 if node.tied else w, 2.0 * w, TRAIN_FACTOR * 2.0 * w, activation_bytes=act)
    return Cost()


@dataclass(frozen=True)
class CostReport:
    """Per-node costs in graph order, and the total."""

    settings: Settings
    nodes: tuple[tuple[Node, Cost], ...]
    total: Cost = field(default_factory=Cost)


def estimate(graph_or_spec: nx.DiGraph | Spec, settings: Settings | None = None) -> CostReport:
    """Price every node of a lowered graph (or of a spec, lowered first)."""
    s = settings or Settings()
    g = lower(graph_or_spec) if isinstance(graph_or_spec, Spec) else graph_or_spec
    rows = tuple((node, node_cost(node, s)) for node in nodes_in_order(g))
    return CostReport(s, rows, sum((c for _, c in rows), Cost()))
