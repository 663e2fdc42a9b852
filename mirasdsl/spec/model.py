"""The model spec: mixers (Miras tuples or parallel hybrids), model sizes, layout, the whole file."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from mirasdsl.spec import rules
from mirasdsl.spec.axes import (
    MIXER_AXES,
    Bias,
    DotBias,
    GdUpdate,
    MatrixMemory,
    Memory,
    Retention,
    Update,
)
from mirasdsl.spec.base import Bool, Frozen, PosInt, Str, tagged
from mirasdsl.spec.features import Features

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]*$"
MixerName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64, strict=True)]


class TupleMixer(Frozen):
    """A token mixer written out on the Miras axes: ``memory × bias × retention × update`` + features."""

    memory: Memory = MatrixMemory()
    """vector | matrix | mlp {depth, expansion, activation, residual, norm} | softmax {window}."""
    bias: Bias = DotBias()
    """Attentional bias: dot | l2 | lp {p} | huber {delta} | robust {radius}."""
    retention: Retention = Retention()
    """Retention gate: {local: none|constant|gated, global: none|l2|lq|kl|elastic_net}."""
    update: Update = GdUpdate()
    """Update rule: gd {chunk} | gd_momentum {chunk, momentum} | implicit | exact."""
    step: Literal["fixed", "data_dependent"] = "fixed"
    """Learning rate β_t of each write: fixed (1) or data-dependent (``σ(W_β x)``; the delta-rule β, Mamba2's Δ)."""
    features: Features = Features()
    """Feature map, q/k norm, short conv, output gate/norm, positions."""
    preset: Str | None = None
    """The preset this mixer was expanded from (set by the loader; informational)."""
    heads: PosInt | None = None
    """Number of heads (default: ``model.heads``)."""
    kv_heads: PosInt | None = None
    """Key/value heads for grouped-query softmax attention (default: ``heads``)."""
    head_dim: PosInt | None = None
    """Key (and query) dim per head (default: ``d_model / heads``)."""
    value_dim: PosInt | None = None
    """Value dim per head (default: ``head_dim``)."""

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, value: object) -> object:
        if isinstance(value, dict):
            value = dict(value)
            for key, kinds in MIXER_AXES.items():
                if key in value:
                    value[key] = tagged(value[key], kinds)
        return value

    @model_validator(mode="after")
    def _combinations(self) -> "TupleMixer":
        rules.check_tuple(self)
        return self


class ParallelMixer(Frozen):
    """Intra-layer hybrid: branches run side by side on the same input and are combined."""

    branches: dict[MixerName, TupleMixer]
    """Named branches (two or more), each a Miras tuple (presets already expanded)."""
    preset: Str | None = None
    """The preset this mixer was expanded from (set by the loader; informational)."""
    combine: Literal["sum", "gate"] = "sum"
    """``sum`` (BASED) or a learned sigmoid ``gate`` between the first two branches (Titans MAG)."""

    @field_validator("branches")
    @classmethod
    def _two_or_more(cls, branches: dict[str, TupleMixer]) -> dict[str, TupleMixer]:
        if len(branches) < 2:
            raise ValueError("a parallel mixer needs at least two branches")
        return branches

    @model_validator(mode="after")
    def _gate_two(self) -> "ParallelMixer":
        if self.combine == "gate" and len(self.branches) != 2:
            raise ValueError("combine 'gate' mixes exactly two branches; use 'sum' for more")
        return self


def _mixer_kind(value: object) -> str:
    if isinstance(value, ParallelMixer) or (isinstance(value, dict) and "branches" in value):
        return "parallel"
    return "tuple"


Mixer = Annotated[
    Union[Annotated[TupleMixer, Tag("tuple")], Annotated[ParallelMixer, Tag("parallel")]],
    Discriminator(_mixer_kind),
]


class ChannelMixer(Frozen):
    """The feed-forward block after each token mixer."""

    kind: Literal["swiglu", "mlp", "none"] = "swiglu"
    """``swiglu`` (gated, 3 matrices), ``mlp`` (2 matrices, GELU) or ``none``."""
    hidden: PosInt | None = None
    """Hidden width (default: 8/3·d_model rounded up to a multiple of 64 for swiglu, 4·d_model for mlp)."""


class ModelSizes(Frozen):
    """Global sizes of the network."""

    vocab_size: PosInt
    """Vocabulary size (embedding rows and logits)."""
    d_model: PosInt
    """Residual stream width."""
    n_layers: Annotated[int, Field(ge=1, le=1024, strict=True)]
    """Number of layers (each: token mixer + channel mixer)."""
    heads: PosInt = 8
    """Default number of heads of every mixer."""
    channel_mixer: ChannelMixer = ChannelMixer()
    """Feed-forward block: {kind: swiglu|mlp|none, hidden}."""
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    """Pre-norm before each block and at the end."""
    tie_embeddings: Bool = False
    """Share the embedding matrix with the output head."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: object) -> object:
        if isinstance(value, dict) and "channel_mixer" in value:
            value = dict(value)
            value["channel_mixer"] = tagged(value["channel_mixer"], ("swiglu", "mlp", "none"))
        return value


class Layout(Frozen):
    """How mixers are stacked: exactly one of ``ratio``, ``pattern`` or ``indices``."""

    ratio: dict[MixerName, Annotated[int, Field(ge=0, le=1024, strict=True)]] | None = None
    """Counts per mixer spread evenly over the layers, e.g. ``{gdn: 3, attn: 1}``."""
    pattern: list[MixerName] | None = None
    """A pattern repeated (and cut) to ``n_layers``, e.g. ``[gdn, gdn, gdn, attn]``."""
    indices: dict[MixerName, list[Annotated[int, Field(ge=0, strict=True)]]] | None = None
    """Explicit zero-based layer indices for some mixers; the rest get ``default``."""
    default: MixerName | None = None
    """With ``indices``: the mixer of every layer not listed (may be omitted if only one is left)."""

    @model_validator(mode="after")
    def _one_form(self) -> "Layout":
        given = [name for name in ("ratio", "pattern", "indices") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"layout needs exactly one of ratio, pattern, indices (got {', '.join(given) or 'none'})"
            )
        if self.default is not None and self.indices is None:
            raise ValueError("layout.default is only used with layout.indices")
        if self.ratio is not None and sum(self.ratio.values()) == 0:
            raise ValueError("layout.ratio must give at least one mixer a count above 0")
        if self.pattern is not None and not self.pattern:
            raise ValueError("layout.pattern must not be empty")
        return self


class Spec(Frozen):
    """A whole model spec file (format version ``miras: 1``)."""

    miras: Literal[1]
    """Spec format version."""
    name: Annotated[str, Field(pattern=NAME_PATTERN, max_length=128, strict=True)]
    """Model name (letters, digits, ``_`` and ``-``)."""
    description: Str | None = None
    """Free text."""
    model: ModelSizes
    """Global sizes."""
    mixers: dict[MixerName, Mixer]
    """Named token mixers: Miras tuples (or ``{preset: name, ...overrides}``) or parallel hybrids."""
    layout: Layout | None = None
    """How mixers are stacked (may be omitted when there is one mixer)."""

    @field_validator("mixers")
    @classmethod
    def _some(cls, mixers: dict[str, object]) -> dict[str, object]:
        if not mixers:
            raise ValueError("define at least one mixer")
        return mixers

    @model_validator(mode="after")
    def _cross(self) -> "Spec":
        rules.check_spec(self)
        return self
