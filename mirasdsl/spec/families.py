"""Which kernel family a Miras tuple lowers to — a registry keyed by the tuple's axis values.

Kept in the spec layer (data only, no torch) so validation can refuse a tuple that no family
computes, with the reason, and the graph layer can print the same decision in ``--explain``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from mirasdsl.spec.axes import update_step

if TYPE_CHECKING:  # pragma: no cover
    from mirasdsl.spec.model import TupleMixer

GLA = "gated_linear_attention"
DELTA = "gated_delta_rule"
DEEP = "deep_memory"
ATTENTION = "softmax_attention"
FAMILIES = (GLA, DELTA, DEEP, ATTENTION)

FAMILY_DOCS = {
    GLA: "dot-product bias on matrix/vector memory, any linear gate (linear attention, RetNet, GLA, Mamba2)",
    DELTA: "L2 bias on matrix/vector memory, any linear gate, token-exact (DeltaNet, Gated DeltaNet, KDA, Longhorn)",
    DEEP: "MLP memory, or any nonlinear bias/retention, or chunk-wise/momentum training (TTT, Titans, Moneta, Yaad, Memora)",
    ATTENTION: "softmax memory: full or sliding-window attention with RoPE/ALiBi (Transformer, SWA)",
}


@dataclass(frozen=True)
class Lowering:
    """The family chosen for a tuple and the reason, as ``--explain`` prints it."""

    family: str
    reason: str


NONLINEAR_BIAS = ("lp", "huber", "robust")
NONLINEAR_GLOBAL = ("l2", "lq", "kl", "elastic_net")


def _linear_key(m: "TupleMixer") -> tuple[str, str] | None:
    """Key of the linear-recurrence registry, or None when the tuple is not a linear recurrence."""
    if m.memory.kind not in ("matrix", "vector"):
        return None
    if m.bias.kind not in ("dot", "l2") or m.retention.global_.kind != "none":
        return None
    if m.update.kind == "gd_momentum":
        return None
    if m.update.kind == "gd" and m.update.chunk is not None and m.bias.kind == "l2":
        return None  # chunk-wise GD with L2 bias is a different model (TTT): deep memory
    if update_step(m.update) > 1:
        return None  # reads lag to the last whole step: not the token-by-token recurrence
    return (m.memory.kind, m.bias.kind)


# (memory, bias) -> family, for tuples that are linear recurrences in the state
LINEAR_REGISTRY: dict[tuple[str, str], str] = {
    ("matrix", "dot"): GLA,
    ("vector", "dot"): GLA,
    ("matrix", "l2"): DELTA,
    ("vector", "l2"): DELTA,
}

_REASONS: dict[str, Callable[["TupleMixer"], str]] = {
    GLA: lambda m: f"{m.memory.kind} memory with dot-product bias and {m.retention.local.kind} local retention "
    "is a linear recurrence S_t = diag(α_t) S_{t-1} + k_t v_tᵀ",
    DELTA: lambda m: f"{m.memory.kind} memory with L2 bias and {m.retention.local.kind} local retention is the "
    "(gated) delta rule, computed token-exact by the WY/UT chunked form",
}


def lower_tuple(m: "TupleMixer") -> Lowering:
    """Choose the kernel family of a tuple. Assumes the tuple passed ``rules.check_tuple``."""
    if m.memory.kind == "softmax":
        window = f"window {m.memory.window}" if m.memory.window else "full context"
        return Lowering(ATTENTION, f"softmax memory ({window}) is a KV cache read by softmax attention")
    key = _linear_key(m)
    if key is not None:
        family = LINEAR_REGISTRY[key]
        return Lowering(family, _REASONS[family](m))
    why = []
    if m.memory.kind == "mlp":
        why.append(f"MLP memory (depth {m.memory.depth})")
    if m.bias.kind in NONLINEAR_BIAS:
        why.append(f"nonlinear bias '{m.bias.kind}'")
    if m.retention.global_.kind in NONLINEAR_GLOBAL:
        why.append(f"global retention '{m.retention.global_.kind}'")
    if m.update.kind == "gd_momentum":
        why.append("momentum")
    if m.update.kind == "gd" and m.update.chunk is not None and m.bias.kind == "l2":
        why.append(f"chunk-wise GD (chunk {m.update.chunk}) on an L2 bias")
    if update_step(m.update) > 1:
        why.append(f"steps of {m.update.step} tokens")
    return Lowering(DEEP, ", ".join(why) + " is not a linear recurrence: trained by the deep-memory rule")
