"""Named models as written-out Miras tuples (MIRAS.md §9).

A preset is plain data: a mixer written out field by field. In a spec, ``{preset: gla}`` expands to
that data and any other field given beside ``preset`` overrides the preset's, recursively
(``{preset: gated-deltanet, features: {short_conv: 0}}`` keeps every other feature).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

_GATED_HEAD = {"local": {"kind": "gated", "granularity": "head", "parameterization": "softplus"}}
_GATED_CHANNEL = {"local": {"kind": "gated", "granularity": "channel", "parameterization": "sigmoid"}}
_DELTA_FEATURES = {"qk_norm": "l2", "short_conv": 4, "feature_map": "silu"}


@dataclass(frozen=True)
class Preset:
    """A named model: its mixer as data, a one-line summary and the source it follows."""

    name: str
    summary: str
    source: str
    mixer: dict[str, Any] = field(default_factory=dict)

    def expand(self) -> dict[str, Any]:
        """A fresh copy of the written-out mixer."""
        return copy.deepcopy(self.mixer)


def _softmax(window: int | None = None, position: str = "rope") -> dict[str, Any]:
    return {
        "memory": {"kind": "softmax", "window": window},
        "bias": "l2",
        "retention": "none",
        "update": "exact",
        "features": {"position": position},
    }


def _taylor_linear() -> dict[str, Any]:
    return {
        "memory": "matrix",
        "bias": "dot",
        "retention": "none",
        "update": "gd",
        "features": {"feature_map": {"kind": "taylor2", "dim": 16}, "normalize": "denominator"},
    }


_ALL = [
    Preset("transformer", "softmax attention, full context, RoPE", "Vaswani et al. 2017; Su et al. 2021",
           _softmax()),
    Preset("transformer-alibi", "softmax attention with ALiBi positions", "Press et al. 2022 (MosaicBERT)",
           _softmax(position="alibi")),
    Preset("swa", "sliding-window softmax attention (window 512), RoPE", "Beltagy et al. 2020",
           _softmax(window=512)),
    Preset("linear-attention", "matrix memory, dot bias, φ = elu+1, denominator norm", "Katharopoulos et al. 2020",
           {"memory": "matrix", "bias": "dot", "retention": "none", "update": "gd",
            "features": {"feature_map": "elu1", "normalize": "denominator"}}),
    Preset("lightning", "linear attention with constant decay and output norm (TransNormerLLM)",
           "Qin et al. 2024", {"memory": "matrix", "bias": "dot", "retention": {"local": {"kind": "constant"}},
                               "update": "gd", "features": {"output_norm": "rmsnorm"}}),
    Preset("retnet", "constant per-head decay γ_h = 1 − 2^{−5−h}, RoPE (xPos), group norm, swish gate",
           "Sun et al. 2023", {"memory": "matrix", "bias": "dot", "retention": {"local": {"kind": "constant"}},
                               "update": "gd", "features": {"position": "rope", "output_norm": "rmsnorm",
                                                             "output_gate": "swish"}}),
    Preset("gla", "per-channel data-dependent gate, output gate and norm", "Yang et al. 2024 (GLA)",
           {"memory": "matrix", "bias": "dot", "retention": _GATED_CHANNEL, "update": "gd",
            "features": {"output_gate": "swish", "output_norm": "rmsnorm"}}),
    Preset("mamba2", "scalar per-head gate exp(−Δ·A), input scaled by Δ, short conv", "Dao & Gu 2024 (SSD)",
           {"memory": "matrix", "bias": "dot", "retention": _GATED_HEAD, "update": "gd", "step": "data_dependent",
            "features": {"short_conv": 4, "feature_map": "silu", "output_gate": "swish", "output_norm": "rmsnorm"}}),
    Preset("based", "Taylor-2 linear attention ∥ sliding-window attention (window 64), summed",
           "Arora et al. 2024 (BASED)",
           {"branches": {"linear": _taylor_linear(), "window": _softmax(window=64)}, "combine": "sum"}),
    Preset("hedgehog", "linear attention with the learnable Hedgehog feature map", "Zhang et al. 2024",
           {"memory": "matrix", "bias": "dot", "retention": "none", "update": "gd",
            "features": {"feature_map": {"kind": "hedgehog", "dim": 64}, "normalize": "denominator"}}),
    Preset("deltanet", "delta rule with data-dependent β, q/k L2 norm, short conv", "Schlag et al. 2021; Yang et al. 2024",
           {"memory": "matrix", "bias": "l2", "retention": "none", "update": "gd", "step": "data_dependent",
            "features": {**_DELTA_FEATURES, "output_norm": "rmsnorm"}}),
    Preset("gated-deltanet", "delta rule with a scalar per-head gate, short conv, output gate", "Yang et al. 2025 (GDN)",
           {"memory": "matrix", "bias": "l2", "retention": _GATED_HEAD, "update": "gd", "step": "data_dependent",
            "features": {**_DELTA_FEATURES, "output_gate": "swish", "output_norm": "rmsnorm"}}),
    Preset("kda", "delta rule with a per-channel gate (Kimi Delta Attention)", "Kimi Team 2025 (Kimi Linear)",
           {"memory": "matrix", "bias": "l2", "retention": _GATED_CHANNEL, "update": "gd", "step": "data_dependent",
            "features": {**_DELTA_FEATURES, "output_gate": "sigmoid", "output_norm": "rmsnorm"}}),
    Preset("longhorn", "implicit (closed-form) online regression step", "Liu et al. 2024 (Longhorn)",
           {"memory": "matrix", "bias": "l2", "retention": "none", "update": "implicit", "step": "data_dependent",
            "features": {"short_conv": 4, "qk_norm": "l2"}}),
    Preset("ttt-linear", "linear memory + LayerNorm + residual, L2 bias, chunk-wise GD (chunk 16)",
           "Sun et al. 2024 (TTT)",
           {"memory": {"kind": "mlp", "depth": 1, "residual": True, "norm": True, "activation": "identity"},
            "bias": "l2", "retention": "none", "update": {"kind": "gd", "chunk": 16}, "step": "data_dependent",
            "features": {"output_norm": "layernorm", "output_gate": "swish"}}),
    Preset("ttt-mlp", "2-layer MLP memory, L2 bias, chunk-wise GD (chunk 16)", "Sun et al. 2024 (TTT)",
           {"memory": {"kind": "mlp", "depth": 2, "expansion": 4.0, "residual": True, "norm": True},
            "bias": "l2", "retention": "none", "update": {"kind": "gd", "chunk": 16}, "step": "data_dependent",
            "features": {"output_norm": "layernorm", "output_gate": "swish"}}),
    Preset("titans", "deep MLP memory, L2 bias, gated decay + weight decay, momentum, chunk-wise (MAL)",
           "Behrouz et al. 2024 (Titans)",
           {"memory": {"kind": "mlp", "depth": 2, "expansion": 4.0, "residual": True},
            "bias": "l2", "retention": {"local": {"kind": "gated", "granularity": "head"},
                                        "global": {"kind": "l2", "strength": "data_dependent"}},
            "update": {"kind": "gd_momentum", "chunk": 64, "momentum": "data_dependent"}, "step": "data_dependent",
            "features": {"short_conv": 4, "qk_norm": "l2", "feature_map": "silu", "output_gate": "sigmoid"}}),
    Preset("titans-pytorch", "Titans memory as titans-pytorch's NeuralMemory trains it: every gradient of a "
           "segment at its start, one step (momentum, decay) per 64 tokens",
           "Behrouz et al. 2024 (Titans); lucidrains/titans-pytorch",
           {"memory": {"kind": "mlp", "depth": 2, "expansion": 4.0, "residual": True, "norm": True},
            "bias": "l2", "retention": {"local": {"kind": "gated", "granularity": "head"}},
            "update": {"kind": "gd_momentum", "chunk": 4096, "step": 64, "momentum": "data_dependent"},
            "step": "data_dependent", "features": {"output_gate": "sigmoid"}}),
    Preset("titans-mag", "Titans memory ∥ sliding-window attention, gated (MAG)", "Behrouz et al. 2024 (Titans)",
           {"branches": {"memory": {"memory": {"kind": "mlp", "depth": 2, "expansion": 4.0, "residual": True},
                                    "bias": "l2", "retention": {"local": {"kind": "gated", "granularity": "head"},
                                                                "global": {"kind": "l2"}},
                                    "update": {"kind": "gd_momentum", "chunk": 64}, "step": "data_dependent",
                                    "features": {"short_conv": 4, "qk_norm": "l2", "feature_map": "silu"}},
                         "window": _softmax(window=512)},
            "combine": "gate"}),
    Preset("moneta", "MLP memory, ℓ_p bias (p = 3), ℓ_q retention (q = 4), chunk-wise GD", "Behrouz et al. 2025 (Miras)",
           {"memory": {"kind": "mlp", "depth": 2, "expansion": 4.0, "residual": True},
            "bias": {"kind": "lp", "p": 3.0}, "retention": {"local": {"kind": "gated"}, "global": {"kind": "lq", "q": 4.0}},
            "update": {"kind": "gd", "chunk": 64}, "step": "data_dependent",
            "features": {"short_conv": 4, "qk_norm": "l2", "output_gate": "sigmoid"}}),
    Preset("yaad", "MLP memory, Huber bias with data-dependent δ, gated decay + weight decay", "Behrouz et al. 2025 (Miras)",
           {"memory": {"kind": "mlp", "depth": 2, "expansion": 4.0, "residual": True},
            "bias": {"kind": "huber", "delta": "data_dependent"},
            "retention": {"local": {"kind": "gated"}, "global": {"kind": "l2", "strength": "data_dependent"}},
            "update": {"kind": "gd", "chunk": 64}, "step": "data_dependent",
            "features": {"short_conv": 4, "qk_norm": "l2", "output_gate": "sigmoid"}}),
    Preset("memora", "MLP memory, L2 bias, KL retention (rows on a scaled simplex)", "Behrouz et al. 2025 (Miras)",
           {"memory": {"kind": "mlp", "depth": 2, "expansion": 4.0, "residual": True},
            "bias": "l2", "retention": {"local": {"kind": "gated"}, "global": {"kind": "kl", "scale": 1.0}},
            "update": {"kind": "gd", "chunk": 64}, "step": "data_dependent",
            "features": {"short_conv": 4, "qk_norm": "l2", "output_gate": "sigmoid"}}),
]

PRESETS: dict[str, Preset] = {p.name: p for p in _ALL}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` laid over it; nested dicts merge, anything else replaces.

    A tagged choice whose kind changes (``memory: matrix`` over ``memory: {kind: mlp, ...}``)
    replaces the whole sub-tree, so options of the old kind do not leak into the new one.
    """
    out = dict(base)
    for key, value in override.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict) and _same_kind(old, value):
            out[key] = deep_merge(old, value)
        else:
            out[key] = value
    return out


def _same_kind(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return "kind" not in new or old.get("kind") == new.get("kind")
