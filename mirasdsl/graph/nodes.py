"""Typed, frozen graph nodes with resolved sizes. Blocks, costs and kernels hang on these."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mirasdsl.spec.model import TupleMixer


@dataclass(frozen=True)
class Node:
    """Base of every node: a unique id and the zero-based layer it belongs to (None outside layers)."""

    id: str
    layer: int | None

    @property
    def kind(self) -> str:
        return type(self).__name__.removesuffix("Node").lower()

    def describe(self) -> str:
        return self.kind


@dataclass(frozen=True)
class EmbeddingNode(Node):
    vocab_size: int
    d_model: int


@dataclass(frozen=True)
class NormNode(Node):
    norm: str  # rmsnorm | layernorm
    dim: int

    def describe(self) -> str:
        return self.norm


@dataclass(frozen=True)
class MixerNode(Node):
    """A Miras-tuple token mixer with every size resolved and its kernel family chosen."""

    name: str  # the mixer's name in the spec
    mixer: TupleMixer
    family: str
    reason: str  # why this family (printed by --explain)
    d_model: int
    heads: int
    kv_heads: int  # = heads except grouped-query softmax attention
    proj_dim: int  # q/k projection dim per head (before the feature map)
    state_dim: int  # key dim of the recurrent state per head (after the feature map)
    value_dim: int
    hidden: int = 0  # MLP-memory hidden width (depth >= 2)

    def describe(self) -> str:
        m = self.mixer
        label = f"preset {m.preset}" if m.preset else "tuple"
        return f"{self.name} ({label})"


@dataclass(frozen=True)
class ParallelMixerNode(Node):
    """An intra-layer hybrid: branch mixers on the same input, combined by sum or gate."""

    name: str
    branches: tuple[MixerNode, ...]
    combine: str
    d_model: int
    preset: str | None = None

    def describe(self) -> str:
        return f"{self.name} ({' ∥ '.join(b.name for b in self.branches)}, {self.combine})"


@dataclass(frozen=True)
class ChannelMixerNode(Node):
    channel: str  # swiglu | mlp
    d_model: int
    hidden: int

    def describe(self) -> str:
        return f"{self.channel} ({self.hidden})"


@dataclass(frozen=True)
class ResidualNode(Node):
    pass


@dataclass(frozen=True)
class HeadNode(Node):
    vocab_size: int
    d_model: int
    tied: bool


def node_to_json(node: Node) -> dict[str, Any]:
    """A JSON-ready dict of a node (pydantic parts dumped by alias)."""
    out: dict[str, Any] = {"kind": node.kind}
    for key, value in node.__dict__.items():
        if isinstance(value, TupleMixer):
            out[key] = value.model_dump(by_alias=True, exclude_none=True)
        elif isinstance(value, tuple) and value and isinstance(value[0], Node):
            out[key] = [node_to_json(v) for v in value]
        else:
            out[key] = value
    return out
