"""Lower a validated spec to a networkx DiGraph of frozen nodes (pre-norm residual stack)."""
from __future__ import annotations

import math

import networkx as nx

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
from mirasdsl.spec.families import lower_tuple
from mirasdsl.spec.layout import resolve_layout
from mirasdsl.spec.model import ChannelMixer, ParallelMixer, Spec, TupleMixer


def feature_dims(m: TupleMixer, head_dim: int) -> tuple[int, int]:
    """(q/k projection dim per head, state key dim per head) after the feature map."""
    fm = m.features.feature_map
    if fm.kind == "taylor2":
        return fm.dim, 1 + fm.dim + fm.dim * fm.dim
    if fm.kind == "hedgehog":
        return head_dim, 2 * fm.dim
    if fm.kind == "performer":
        return head_dim, fm.features
    if fm.kind == "cosformer":
        return head_dim, 2 * head_dim
    return head_dim, head_dim


def mixer_node(spec: Spec, node_id: str, layer: int, name: str, m: TupleMixer) -> MixerNode:
    """Resolve the sizes of one tuple mixer and choose its kernel family."""
    heads = m.heads or spec.model.heads
    head_dim = m.head_dim or spec.model.d_model // heads
    value_dim = m.value_dim or head_dim
    proj, state = feature_dims(m, head_dim)
    if m.memory.kind == "vector":
        state = value_dim  # elementwise: one 1×1 state per channel (gates are per channel)
    hidden = 0
    if m.memory.kind == "mlp" and m.memory.depth >= 2:
        hidden = max(1, math.ceil(m.memory.expansion * proj))
    low = lower_tuple(m)
    return MixerNode(node_id, layer, name, m, low.family, low.reason, spec.model.d_model, heads,
                     m.kv_heads or heads, proj, state, value_dim, hidden)


def channel_hidden(spec: Spec, cm: ChannelMixer) -> int:
    """Hidden width of the channel mixer (default: 8/3·d rounded up to 64 for swiglu, 4·d for mlp)."""
    if cm.hidden is not None:
        return cm.hidden
    d = spec.model.d_model
    if cm.kind == "swiglu":
        return 64 * math.ceil(8 * d / 3 / 64)
    return 4 * d


def _mixer(spec: Spec, layer: int, name: str) -> Node:
    mixer = spec.mixers[name]
    node_id = f"L{layer}.mixer"
    if isinstance(mixer, ParallelMixer):
        branches = tuple(mixer_node(spec, f"{node_id}.{b}", layer, b, m) for b, m in mixer.branches.items())
        return ParallelMixerNode(node_id, layer, name, branches, mixer.combine, spec.model.d_model, mixer.preset)
    return mixer_node(spec, node_id, layer, name, mixer)


def lower(spec: Spec) -> nx.DiGraph:
    """The graph of blocks: embedding → [norm → mixer → + → norm → channel mixer → +]×L → norm → head.

    Node keys are node ids; the node object is the ``node`` attribute. Residual nodes have two
    inputs (the stream and the block output), so the graph is a DAG, not a chain.
    """
    g = nx.DiGraph(name=spec.name)
    d = spec.model.d_model

    def add(node: Node, *inputs: str) -> str:
        g.add_node(node.id, node=node)
        for src in inputs:
            g.add_edge(src, node.id)
        return node.id

    stream = add(EmbeddingNode("embed", None, spec.model.vocab_size, d))
    cm = spec.model.channel_mixer
    for layer, name in enumerate(resolve_layout(spec)):
        norm = add(NormNode(f"L{layer}.norm1", layer, spec.model.norm, d), stream)
        mix = add(_mixer(spec, layer, name), norm)
        stream = add(ResidualNode(f"L{layer}.add1", layer), stream, mix)
        if cm.kind != "none":
            norm = add(NormNode(f"L{layer}.norm2", layer, spec.model.norm, d), stream)
            ffn = add(ChannelMixerNode(f"L{layer}.ffn", layer, cm.kind, d, channel_hidden(spec, cm)), norm)
            stream = add(ResidualNode(f"L{layer}.add2", layer), stream, ffn)
    norm = add(NormNode("final_norm", None, spec.model.norm, d), stream)
    add(HeadNode("head", None, spec.model.vocab_size, d, spec.model.tie_embeddings), norm)
    return g


def nodes_in_order(g: nx.DiGraph) -> list[Node]:
    """Nodes in a topological order that keeps each layer's blocks together."""
    return [g.nodes[n]["node"] for n in nx.lexicographical_topological_sort(g, key=_order_key(g))]


def _order_key(g: nx.DiGraph):
    index = {n: i for i, n in enumerate(g.nodes)}
    return lambda n: index[n]
