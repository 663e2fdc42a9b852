"""Features outside the Miras tuple that every real model has: feature map, norms, conv, gates, positions."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Discriminator, Field, Tag, model_validator

from mirasdsl.spec.base import Frozen, tagged


class SimpleMap(Frozen):
    """A fixed elementwise feature map φ applied to q and k.

    ``identity``; ``elu1`` (elu+1, linear attention); ``relu``; ``silu``; ``softmax`` over the head
    dim; ``cosformer`` (relu, with cos/sin position re-weighting doubling the key dim);
    ``nala`` (norm-aware: ``φ(x) = ‖x‖·normalize(relu(x)^p)``-style, see blocks/features.py);
    ``mala`` (magnitude-aware: relu with a magnitude-preserving rescale).
    """

    kind: Literal["identity", "elu1", "relu", "silu", "softmax", "cosformer", "nala", "mala"]


class Taylor2Map(Frozen):
    """BASED: 2nd-order Taylor map ``[1, x, x⊗x/√2]`` on ``x/d^{1/4}``; feature dim ``1 + d + d²``."""

    kind: Literal["taylor2"] = "taylor2"
    dim: Annotated[int, Field(ge=1, le=64, strict=True)] = 16
    """The small dim d that q and k are projected to before the expansion."""


class HedgehogMap(Frozen):
    """Hedgehog: learnable ``[softmax(Wx), softmax(−Wx)]``; feature dim ``2·dim``."""

    kind: Literal["hedgehog"] = "hedgehog"
    dim: Annotated[int, Field(ge=1, le=4096, strict=True)] = 64
    """Width of the learnable projection W (per head)."""


class PerformerMap(Frozen):
    """FAVOR+ positive random features ``exp(ωᵀx − ‖x‖²/2)/√m``."""

    kind: Literal["performer"] = "performer"
    features: Annotated[int, Field(ge=1, le=65536, strict=True)] = 64
    """Number m of random features."""


SIMPLE_MAPS = ("identity", "elu1", "relu", "silu", "softmax", "cosformer", "nala", "mala")
FEATURE_MAP_KINDS = SIMPLE_MAPS + ("taylor2", "hedgehog", "performer")


def _feature_map_discriminator(value: object) -> str | None:
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    if kind in SIMPLE_MAPS:
        return "simple"
    return kind if isinstance(kind, str) else None


FeatureMap = Annotated[
    Union[
        Annotated[SimpleMap, Tag("simple")],
        Annotated[Taylor2Map, Tag("taylor2")],
        Annotated[HedgehogMap, Tag("hedgehog")],
        Annotated[PerformerMap, Tag("performer")],
    ],
    Discriminator(_feature_map_discriminator),
]


class Features(Frozen):
    """Projections' extras: feature map, q/k norm, short conv, output gate/norm, positions."""

    feature_map: FeatureMap = SimpleMap(kind="identity")
    """φ on q and k: identity | elu1 | relu | silu | softmax | cosformer | nala | mala |
    taylor2 {dim} | hedgehog {dim} | performer {features}."""
    qk_norm: Literal["none", "l2", "rms"] = "none"
    """Normalise q and k per head: ``l2`` (DeltaNet family) or ``rms`` (with a learned scale)."""
    normalize: Literal["none", "denominator"] = "none"
    """``denominator``: divide the read-out by ``φ(q)ᵀΣφ(k)`` (original linear attention)."""
    short_conv: Annotated[int, Field(ge=0, le=16, strict=True)] = 0
    """Kernel size of a causal depthwise convolution on q, k, v (0 = none; 4 in Mamba2/GDN)."""
    output_gate: Literal["none", "sigmoid", "swish"] = "none"
    """Gate the read-out with ``σ(W_g x)`` or ``swish(W_g x)``."""
    output_norm: Literal["none", "rmsnorm", "layernorm"] = "none"
    """Per-head norm of the read-out (RetNet's group norm, GLA, GDN)."""
    position: Literal["none", "rope", "alibi"] = "none"
    """Positional scheme: RoPE on q/k, ALiBi logit bias (softmax memory only), or none."""
    rope_base: Annotated[float, Field(gt=1.0, strict=True)] = 10000.0
    """RoPE base frequency."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: object) -> object:
        if isinstance(value, dict) and "feature_map" in value:
            value = dict(value)
            value["feature_map"] = tagged(value["feature_map"], FEATURE_MAP_KINDS)
        if isinstance(value, dict) and isinstance(value.get("output_gate"), bool):
            value = dict(value)
            value["output_gate"] = "swish" if value["output_gate"] else "none"
        return value
