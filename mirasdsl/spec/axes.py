"""The four Miras axes — memory, attentional bias, retention, update rule — as spec models.

Each axis is a tagged choice: YAML may say ``memory: matrix``, ``memory: {mlp: {depth: 2}}`` or
``memory: {kind: mlp, depth: 2}``; all three normalise to the last form. Equations: MIRAS.md.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from mirasdsl.spec.base import Bool, Frozen, PosInt, Prob, tagged

# ---------------------------------------------------------------- memory


class VectorMemory(Frozen):
    """Elementwise (diagonal) state ``s ∈ R^d`` per head: RetNet/LRU-like recurrences."""

    kind: Literal["vector"] = "vector"


class MatrixMemory(Frozen):
    """Matrix state ``S ∈ R^{d_k×d_v}`` per head, read out as ``Sᵀq``: the linear-attention family."""

    kind: Literal["matrix"] = "matrix"


class MlpMemory(Frozen):
    """A small MLP per head whose weights are the memory (TTT-MLP, Titans, Moneta, Yaad, Memora)."""

    kind: Literal["mlp"] = "mlp"
    depth: PosInt = 2
    """Number of linear layers; 1 is a linear map (a matrix memory trained by the deep-memory rule)."""
    expansion: Annotated[float, Field(gt=0.0, le=16.0)] = 4.0
    """Hidden width as a multiple of the key head dim (depth ≥ 2)."""
    activation: Literal["gelu", "silu", "relu", "identity"] = "gelu"
    """Non-linearity between the MLP's layers."""
    residual: Bool = True
    """Read out ``M(x) = x + MLP(x)`` (needs key and value head dims equal)."""
    norm: Bool = False
    """Parameter-free LayerNorm on the MLP output before the residual (TTT style)."""


class SoftmaxMemory(Frozen):
    """Non-parametric memory: the KV cache read by softmax attention (full or sliding window)."""

    kind: Literal["softmax"] = "softmax"
    window: PosInt | None = None
    """Attend to the last ``window`` tokens only (sliding-window attention); null is full attention."""


MEMORY_KINDS = ("vector", "matrix", "mlp", "softmax")
Memory = Annotated[
    Union[VectorMemory, MatrixMemory, MlpMemory, SoftmaxMemory], Field(discriminator="kind")
]

# ---------------------------------------------------------------- attentional bias


class DotBias(Frozen):
    """``ℓ = −⟨M(k), v⟩``: Hebbian update, the linear-attention family."""

    kind: Literal["dot"] = "dot"


class L2Bias(Frozen):
    """``ℓ = ½‖M(k) − v‖²``: the delta rule."""

    kind: Literal["l2"] = "l2"


class LpBias(Frozen):
    """``ℓ = (1/p)‖M(k) − v‖_p^p`` (Moneta)."""

    kind: Literal["lp"] = "lp"
    p: Annotated[float, Field(ge=1.0, le=8.0)] = 3.0
    """The exponent p (1 ≤ p ≤ 8)."""


class HuberBias(Frozen):
    """Huber loss on the residual's norm (Yaad)."""

    kind: Literal["huber"] = "huber"
    delta: Annotated[float, Field(gt=0.0)] | Literal["data_dependent"] = "data_dependent"
    """Threshold δ between the quadratic and linear regimes, or ``data_dependent`` (δ_t from x_t)."""


class RobustBias(Frozen):
    """Value-shift-robust L2: ``½‖r‖² + Δ‖r‖ + Δ²/2``."""

    kind: Literal["robust"] = "robust"
    radius: Annotated[float, Field(gt=0.0)] = 0.1
    """Radius Δ of the perturbation ball on the value."""


BIAS_KINDS = ("dot", "l2", "lp", "huber", "robust")
Bias = Annotated[Union[DotBias, L2Bias, LpBias, HuberBias, RobustBias], Field(discriminator="kind")]

# ---------------------------------------------------------------- retention


class NoLocal(Frozen):
    """No forgetting: ``α_t = 1``."""

    kind: Literal["none"] = "none"


class ConstantDecay(Frozen):
    """A fixed decay per head, not data-dependent (RetNet, Lightning)."""

    kind: Literal["constant"] = "constant"
    decay: Prob | None = None
    """One decay γ for every head, or null for RetNet's schedule ``γ_h = 1 − 2^{−5−h}``."""


class GatedDecay(Frozen):
    """A data-dependent decay ``α_t`` computed from ``x_t``."""

    kind: Literal["gated"] = "gated"
    granularity: Literal["head", "channel"] = "head"
    """``head``: one scalar per head (Mamba2, Gated DeltaNet); ``channel``: a vector over d_k (GLA, KDA)."""
    parameterization: Literal["softplus", "sigmoid"] = "softplus"
    """``softplus``: ``α = exp(−exp(A)·softplus(xW + b))`` (Mamba2); ``sigmoid``: ``α = σ(xW + b)^{1/τ}`` (GLA)."""
    rank: PosInt = 16
    """Rank of the low-rank projection that makes per-channel gates (ignored per head)."""


LOCAL_KINDS = ("none", "constant", "gated")
LocalRetention = Annotated[Union[NoLocal, ConstantDecay, GatedDecay], Field(discriminator="kind")]


class NoGlobal(Frozen):
    """No global retention term."""

    kind: Literal["none"] = "none"


class L2Global(Frozen):
    """Weight decay: multiplies the memory by ``(1 − λ_t)`` each step (Titans, Yaad)."""

    kind: Literal["l2"] = "l2"
    strength: Annotated[float, Field(ge=0.0, lt=1.0)] | Literal["data_dependent"] = "data_dependent"
    """A constant λ, or ``data_dependent`` (λ_t from x_t)."""


class LqGlobal(Frozen):
    """Moneta's ℓ_q retention: ``W_t = A_t / ‖A_t‖_q^{q−2}`` on an accumulator A."""

    kind: Literal["lq"] = "lq"
    q: Annotated[float, Field(ge=2.0, le=8.0)] = 4.0
    """The exponent q (2 ≤ q ≤ 8)."""


class KlGlobal(Frozen):
    """Memora: rows on a scaled simplex, ``W_t = c·softmax(α log W_{t−1} − η ∇ℓ)``."""

    kind: Literal["kl"] = "kl"
    scale: Annotated[float, Field(gt=0.0)] = 1.0
    """The simplex scale c."""


class ElasticNetGlobal(Frozen):
    """Soft thresholding ``W_t = S_γ(λ W_{t−1} − η ∇ℓ)``."""

    kind: Literal["elastic_net"] = "elastic_net"
    l1: Annotated[float, Field(ge=0.0)] = 1e-3
    """Soft-threshold γ (the ℓ1 strength)."""
    l2: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    """ℓ2 strength: λ = 1 − l2."""


GLOBAL_KINDS = ("none", "l2", "lq", "kl", "elastic_net")
GlobalRetention = Annotated[
    Union[NoGlobal, L2Global, LqGlobal, KlGlobal, ElasticNetGlobal], Field(discriminator="kind")
]


class Retention(Frozen):
    """Retention gate: a local part (how far one step moves) and a global part (what is forgotten)."""

    local: LocalRetention = NoLocal()
    """``none`` | ``constant {decay}`` | ``gated {granularity: head|channel}``."""
    global_: GlobalRetention = Field(default=NoGlobal(), alias="global")
    """``none`` | ``l2 {strength}`` | ``lq {q}`` | ``kl {scale}`` | ``elastic_net {l1, l2}``."""

    model_config = Frozen.model_config | {"populate_by_name": True}

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: object) -> object:
        if value is None or value == "none":
            return {}
        if isinstance(value, dict):
            value = dict(value)
            if "local" in value:
                value["local"] = tagged(value["local"], LOCAL_KINDS)
            if "global" in value:
                value["global"] = tagged(value["global"], GLOBAL_KINDS)
        return value


# ---------------------------------------------------------------- update rule


class GdUpdate(Frozen):
    """One step of gradient descent per token (or per chunk)."""

    kind: Literal["gd"] = "gd"
    chunk: PosInt | None = None
    """Chunk-wise GD: every gradient inside a chunk of this many tokens is taken at the chunk's
    starting weights. Null is token-exact."""
    step: PosInt | None = None
    """Tokens per update step: their gradients are summed into one step, and a token reads
    with the weights after the last whole step (titans-pytorch's ``chunk_size``; its default
    takes every gradient of a sequence at its start: ``chunk`` = the sequence length). Needs
    ``chunk``, a multiple of it. Null steps every token."""


class MomentumUpdate(Frozen):
    """GD with momentum ``Z_t = μ Z_{t−1} − θ ∇ℓ``, ``W_t = α W_{t−1} + Z_t`` (Titans)."""

    kind: Literal["gd_momentum"] = "gd_momentum"
    chunk: PosInt | None = None
    """Chunk-wise training as for ``gd``; null is token-exact."""
    step: PosInt | None = None
    """Tokens per update step as for ``gd`` (momentum and decay then act once per step)."""
    momentum: Prob | Literal["data_dependent"] = "data_dependent"
    """A constant μ or ``data_dependent`` (μ_t from x_t)."""


class ImplicitUpdate(Frozen):
    """Closed-form implicit step (Longhorn): ``ε_t = β_t/(1 + β_t‖k‖²)``."""

    kind: Literal["implicit"] = "implicit"


class ExactUpdate(Frozen):
    """The objective is solved exactly over the window: softmax attention."""

    kind: Literal["exact"] = "exact"


def update_step(update: object) -> int:
    """Tokens per update step of an update rule: its ``step``, 1 when unset or not a GD rule."""
    return getattr(update, "step", None) or 1


UPDATE_KINDS = ("gd", "gd_momentum", "implicit", "exact")
Update = Annotated[
    Union[GdUpdate, MomentumUpdate, ImplicitUpdate, ExactUpdate], Field(discriminator="kind")
]


# the mixer's tagged axes, for normalising shorthands (``memory: mlp`` → ``{kind: mlp}``)
MIXER_AXES: dict[str, tuple[str, ...]] = {"memory": MEMORY_KINDS, "bias": BIAS_KINDS, "update": UPDATE_KINDS}
