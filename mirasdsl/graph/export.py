"""Export a lowered graph to JSON and Graphviz DOT, and explain each lowering decision."""
from __future__ import annotations

import json
from typing import Any

import networkx as nx

from mirasdsl.graph.lower import nodes_in_order
from mirasdsl.graph.nodes import MixerNode, ParallelMixerNode, node_to_json
from mirasdsl.spec.families import ATTENTION


def to_json(g: nx.DiGraph) -> dict[str, Any]:
    """Nodes (typed, with resolved sizes) and edges, JSON-ready."""
    return {
        "name": g.graph.get("name"),
        "nodes": [node_to_json(n) for n in nodes_in_order(g)],
        "edges": [[a, b] for a, b in g.edges],
    }


def _dot_label(node: Any) -> str:
    text = f"{node.id}\\n{node.describe()}"
    if isinstance(node, MixerNode):
        text += f"\\n{node.family}"
    return text.replace('"', "'")


def to_dot(g: nx.DiGraph) -> str:
    """Graphviz DOT text (rendered with ``dot -Tsvg``)."""
    lines = [f'digraph "{g.graph.get("name", "model")}" {{', "  rankdir=TB; node [shape=box, fontsize=10];"]
    for node in nodes_in_order(g):
        shape = "ellipse" if node.kind == "residual" else "box"
        lines.append(f'  "{node.id}" [label="{_dot_label(node)}", shape={shape}];')
    lines += [f'  "{a}" -> "{b}";' for a, b in g.edges]
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_graph(g: nx.DiGraph, path: str) -> None:
    """Write JSON for ``*.json`` and DOT for ``*.dot``/``*.gv`` (the CLI checks the suffix first)."""
    if path.endswith(".json"):
        text = json.dumps(to_json(g), indent=2, ensure_ascii=False) + "\n"
    else:
        text = to_dot(g)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def _explain_mixer(node: MixerNode, backend: str) -> list[str]:
    m = node.mixer
    kernel = "PyTorch SDPA (flash / masked)" if node.family == ATTENTION else f"{node.family} via backend '{backend}'"
    lines = [f"  {node.name}:"]
    if m.preset:
        lines.append(f"    preset '{m.preset}' expands to the tuple below (fields given beside it override)")
    written = m.model_dump(by_alias=True, exclude={"preset"}, exclude_none=True)
    for axis in ("memory", "bias", "retention", "update", "step", "features"):
        lines.append(f"    {axis}: {json.dumps(written[axis], ensure_ascii=False)}")
    lines.append(f"    sizes: heads {node.heads} (kv {node.kv_heads}), q/k dim {node.proj_dim}, "
                 f"state key dim {node.state_dim}, value dim {node.value_dim}"
                 + (f", memory hidden {node.hidden}" if node.hidden else ""))
    lines.append(f"    family: {node.family} — because {node.reason}")
    lines.append(f"    kernel: {kernel}")
    return lines


def explain(g: nx.DiGraph, layers: list[str], backend: str) -> list[str]:
    """One line per decision: layout resolution, preset expansion, family and kernel per mixer."""
    lines = ["layout resolved to (zero-based layer: mixer):"]
    lines += [f"  {i}: {name}" for i, name in enumerate(layers)]
    lines.append("mixers:")
    seen: set[str] = set()
    for node in nodes_in_order(g):
        if isinstance(node, (MixerNode, ParallelMixerNode)) and node.name not in seen:
            seen.add(node.name)
            if isinstance(node, ParallelMixerNode):
                lines.append(f"  {node.name}: parallel branches combined by {node.combine}"
                             + (f" (preset '{node.preset}')" if node.preset else ""))
                for b in node.branches:
                    lines += ["  " + x for x in _explain_mixer(b, backend)]
            else:
                lines += _explain_mixer(node, backend)
    return lines
