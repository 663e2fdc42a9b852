"""Cross-field rules: combinations of axis values that no model computes are refused here.

Each rule raises ``ValueError("[at <sub.path>] reason")``; the loader turns the bracket into the
dotted field path and the file position.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from mirasdsl.spec.families import DEEP, lower_tuple

if TYPE_CHECKING:  # pragma: no cover
    from mirasdsl.spec.model import Spec, TupleMixer

EXPANDING_MAPS = ("taylor2", "hedgehog", "performer")


def fail(path: str, message: str) -> ValueError:
    return ValueError(f"[at {path}] {message}")


def _check_softmax(m: "TupleMixer") -> None:
    if m.update.kind != "exact":
        raise fail("update", "softmax memory is solved exactly over its window: update must be 'exact'")
    if m.bias.kind != "l2":
        raise fail("bias", "softmax attention is the exact minimiser of a weighted L2 bias: bias must be 'l2'")
    if m.retention.local.kind != "none" or m.retention.global_.kind != "none":
        raise fail("retention", "softmax memory forgets through its window only: retention must be none "
                   "(use memory: {softmax: {window: N}})")
    if m.features.feature_map.kind != "identity":
        raise fail("features.feature_map", "softmax attention uses q and k as they are: feature_map must be identity")
    if m.features.normalize != "none":
        raise fail("features.normalize", "softmax attention is normalised already: normalize must be none")


def _check_parametric(m: "TupleMixer") -> None:
    if m.update.kind == "exact":
        raise fail("update", f"update 'exact' solves a softmax memory; {m.memory.kind} memory needs gd, gd_momentum or implicit")
    if m.features.position == "alibi":
        raise fail("features.position", "ALiBi is a logit bias of softmax attention; use rope or none")
    if m.kv_heads is not None:
        raise fail("kv_heads", "grouped key/value heads apply to softmax memory only")
    if m.update.kind == "implicit" and (m.memory.kind != "matrix" or m.bias.kind != "l2"):
        raise fail("update", "the implicit (Longhorn) step is the closed form of an L2 bias on matrix memory")
    if m.update.kind == "implicit" and m.retention.global_.kind != "none":
        raise fail("retention.global", "the implicit step has no global retention term")
    if m.features.normalize == "denominator" and m.bias.kind != "dot":
        raise fail("features.normalize", "the denominator φ(q)ᵀΣφ(k) normalises dot-product (linear) attention only")


def _check_deep(m: "TupleMixer") -> None:
    if m.retention.local.kind == "gated" and m.retention.local.granularity == "channel":
        raise fail("retention.local.granularity", "deep memory takes one decay per head: use granularity 'head'")
    if m.features.feature_map.kind in EXPANDING_MAPS:
        raise fail("features.feature_map", f"feature map '{m.features.feature_map.kind}' changes the key dim of a "
                   "linear-attention state; deep memory reads q as it is")
    if m.features.normalize != "none":
        raise fail("features.normalize", "the denominator applies to linear attention, not to deep memory")
    if m.memory.kind == "vector":
        raise fail("memory", "vector memory is a linear recurrence: use bias dot or l2, no global retention, gd token-exact")


def _check_step(m: "TupleMixer") -> None:
    step, chunk = getattr(m.update, "step", None), getattr(m.update, "chunk", None)
    if step is None:
        return
    if chunk is None or chunk % step:
        raise fail("update.step", f"step {step} needs a chunk that is a multiple of it (chunk is {chunk}); "
                   "chunk: the tokens whose gradients share their starting weights, e.g. the sequence length")
    if step > 1 and m.retention.global_.kind == "elastic_net":
        raise fail("update.step", "elastic_net's soft threshold acts after every token: use step 1 (or null)")


def check_tuple(m: "TupleMixer") -> None:
    """Refuse impossible axis combinations of one tuple, with the reason."""
    _check_step(m)
    if m.memory.kind == "softmax":
        _check_softmax(m)
        return
    _check_parametric(m)
    if m.memory.kind == "vector" and m.features.feature_map.kind in EXPANDING_MAPS:
        raise fail("features.feature_map", "vector memory is elementwise: its feature map must keep the dim")
    if m.retention.global_.kind == "kl" and m.memory.kind not in ("matrix", "mlp"):
        raise fail("retention.global", "KL retention keeps memory rows on a simplex: it needs matrix or mlp memory")
    if lower_tuple(m).family == DEEP:
        _check_deep(m)


def _check_sizes(spec: "Spec", name: str, m: "TupleMixer", where: str) -> None:
    heads = m.heads or spec.model.heads
    if m.head_dim is None and spec.model.d_model % heads:
        raise fail(f"{where}.heads" if m.heads else "model.heads", f"d_model {spec.model.d_model} is not divisible by {heads} heads; "
                   "set head_dim explicitly or choose a divisor")
    head_dim = m.head_dim or spec.model.d_model // heads
    value_dim = m.value_dim or head_dim
    if m.kv_heads is not None and heads % m.kv_heads:
        raise fail(f"{where}.kv_heads", f"{heads} heads are not divisible into {m.kv_heads} key/value groups")
    if m.memory.kind == "vector" and head_dim != value_dim:
        raise fail(f"{where}.value_dim", "vector memory is elementwise: value_dim must equal head_dim")
    if m.memory.kind == "mlp" and m.memory.residual and head_dim != value_dim:
        raise fail(f"{where}.memory.residual", "a residual MLP memory maps keys to values of the same dim: "
                   "value_dim must equal head_dim")
    if m.features.position == "rope" and head_dim % 2:
        raise fail(f"{where}.features.position", f"RoPE rotates pairs of dims: head_dim {head_dim} must be even")


def check_spec(spec: "Spec") -> None:
    """Refuse a spec whose parts do not fit together (names, layout, sizes)."""
    from mirasdsl.spec.layout import resolve_layout  # local: layout imports this module's fail()

    for name, mixer in spec.mixers.items():
        if hasattr(mixer, "branches"):
            for bname, branch in mixer.branches.items():
                _check_sizes(spec, name, branch, f"mixers.{name}.branches.{bname}")
        else:
            _check_sizes(spec, name, mixer, f"mixers.{name}")
    resolve_layout(spec)
