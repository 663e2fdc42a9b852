"""Render compile results for people (rich tables) and programs (JSON-ready dicts)."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.table import Table

from mirasdsl.cost import Cost, CostReport
from mirasdsl.graph.nodes import MixerNode, Node, ParallelMixerNode
from mirasdsl.kernels.dispatch import steps_triton_supported
from mirasdsl.spec.axes import update_step
from mirasdsl.spec.model import Spec, TupleMixer


def si(x: float, unit: str = "") -> str:
    """1234567 → '1.23M'."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.2f}{suffix}{unit}"
    return f"{x:.0f}{unit}"


def nbytes(x: float) -> str:
    """Bytes in binary units."""
    for div, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(x) >= div:
            return f"{x / div:.2f} {suffix}"
    return f"{x:.0f} B"


def tuple_text(m: TupleMixer) -> str:
    """memory × bias × retention × update in one line."""
    mem = m.memory.kind + (f"(window {m.memory.window})" if getattr(m.memory, "window", None) else "")
    if m.memory.kind == "mlp":
        mem += f"(depth {m.memory.depth})"
    ret = m.retention.local.kind
    if m.retention.local.kind == "gated":
        ret += f"/{m.retention.local.granularity}"
    if m.retention.global_.kind != "none":
        ret += f"+{m.retention.global_.kind}"
    upd = m.update.kind + (f"(chunk {m.update.chunk})" if getattr(m.update, "chunk", None) else "")
    if update_step(m.update) > 1:
        upd = upd[:-1] + f", step {m.update.step})"
    return f"{mem} × {m.bias.kind} × {ret} × {upd}"


def ranges(idx: list[int]) -> str:
    """[0,1,2,4] → '0-2, 4'."""
    out, start = [], None
    for i, v in enumerate(idx):
        if start is None:
            start = v
        if i + 1 == len(idx) or idx[i + 1] != v + 1:
            out.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(out)


def groups(report: CostReport) -> "OrderedDict[str, dict[str, Any]]":
    """Rows grouped: one per mixer name (over its layers), channel mixers, norms, embedding, head."""
    out: OrderedDict[str, dict[str, Any]] = OrderedDict()
    for node, cost in report.nodes:
        if isinstance(node, (MixerNode, ParallelMixerNode)):
            key, label = f"mixer:{node.name}", node.name
        elif node.kind == "residual":
            continue
        else:
            key, label = node.kind, {"channelmixer": "channel mixer"}.get(node.kind, node.kind)
        g = out.setdefault(key, {"label": label, "node": node, "layers": [], "cost": Cost()})
        g["cost"] = g["cost"] + cost
        if node.layer is not None and node.layer not in g["layers"]:
            g["layers"].append(node.layer)
    return out


def _kernel_text(node: Node, backend: str) -> str:
    if isinstance(node, MixerNode):
        if node.family == "softmax_attention":
            return f"{node.family} (sdpa)"
        if backend != "naive" and update_step(node.mixer.update) > 1:  # kernels/deep_memory/steps.py
            fused = backend == "triton" and steps_triton_supported(
                node.mixer.memory.depth if node.mixer.memory.kind == "mlp" else 1, node.proj_dim,
                node.value_dim, update_step(node.mixer.update))
            return f"{node.family} (steps: {'triton keys + reads' if fused else 'torch matmuls'})"
        return f"{node.family} ({backend})"
    if isinstance(node, ParallelMixerNode):
        return " ∥ ".join(_kernel_text(b, backend) for b in node.branches)
    return "torch"


def _tuple_cell(node: Node) -> str:
    if isinstance(node, MixerNode):
        return tuple_text(node.mixer)
    if isinstance(node, ParallelMixerNode):
        return f" {node.combine} ".join(tuple_text(b.mixer) for b in node.branches)
    return node.describe()


def cost_table(spec: Spec, report: CostReport, backend: str) -> Table:
    s = report.settings
    t = Table(title=f"{spec.name} — {spec.model.n_layers} layers, d_model {spec.model.d_model}, "
                    f"context {s.context:,}, {s.dtype}", title_justify="left")
    for col, just in (("block", "left"), ("layers", "left"), ("tuple", "left"), ("kernel", "left"),
                      ("params", "right"), ("fwd FLOPs/tok", "right"), ("train FLOPs/tok", "right"),
                      ("state", "right"), (f"KV @{s.context:,}", "right")):
        t.add_column(col, justify=just, overflow="fold")
    for g in groups(report).values():
        c: Cost = g["cost"]
        t.add_row(g["label"], ranges(g["layers"]) if g["layers"] else "", _tuple_cell(g["node"]),
                  _kernel_text(g["node"], backend), si(c.params), si(c.fwd_flops), si(c.train_flops),
                  nbytes(c.state_bytes) if c.state_bytes else "", nbytes(c.kv_bytes) if c.kv_bytes else "")
    tot = report.total
    t.add_section()
    t.add_row("total", "", "", "", si(tot.params), si(tot.fwd_flops), si(tot.train_flops),
              nbytes(tot.state_bytes), nbytes(tot.kv_bytes), style="bold")
    return t


def layout_text(layers: list[str]) -> str:
    """'layer → mixer' listing, zero-based, compact."""
    per: OrderedDict[str, list[int]] = OrderedDict()
    for i, name in enumerate(layers):
        per.setdefault(name, []).append(i)
    return "; ".join(f"{name} ×{len(idx)}: {ranges(idx)}" for name, idx in per.items())


def print_compile(console: Console, spec: Spec, layers: list[str], report: CostReport, backend: str) -> None:
    console.print(cost_table(spec, report, backend))
    console.print(f"layout (zero-based): {layout_text(layers)}")
    s, tot = report.settings, report.total
    console.print(f"decode cache per sequence: {nbytes(tot.state_bytes)} state + {nbytes(tot.kv_bytes)} KV "
                  f"at {s.context:,} tokens (+{nbytes(tot.kv_bytes_per_token)} per further token); "
                  f"training activations at batch {s.batch} × {s.seq_len:,}: {nbytes(tot.activation_bytes)}")


def report_json(spec: Spec, layers: list[str], report: CostReport, backend: str) -> dict[str, Any]:
    """Everything ``compile`` knows, for programs."""
    return {
        "name": spec.name,
        "settings": asdict(report.settings),
        "layout": layers,
        "backend": backend,
        "total": asdict(report.total),
        "groups": [{"block": g["label"], "layers": g["layers"], "tuple": _tuple_cell(g["node"]),
                    "kernel": _kernel_text(g["node"], backend), **asdict(g["cost"])}
                   for g in groups(report).values()],
        "nodes": [{"id": n.id, "kind": n.kind, "layer": n.layer, **asdict(c)} for n, c in report.nodes],
    }
