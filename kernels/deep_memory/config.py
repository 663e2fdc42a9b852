"""Configuration of the deep memory kernel family (see README.md for the math of every field)."""
from __future__ import annotations

from dataclasses import dataclass

ACTIVATIONS = ("gelu", "silu", "relu", "identity")
BIASES = ("dot", "l2", "lp", "huber", "robust")
RETENTIONS = ("none", "l2", "lq", "kl", "elastic_net")
# global retentions whose map from the recurrent state to the weights is nonlinear: the
# TTT dual form does not apply inside a chunk, the chunked path materialises per-token weights
NONLINEAR_RETENTIONS = ("lq", "kl", "elastic_net")

# field -> the only bias / retention value it may be set with
_BIAS_FIELDS = {"p": "lp", "robust_radius": "robust"}
_RETENTION_FIELDS = {"q_norm": "lq", "kl_scale": "kl", "l1": "elastic_net"}


@dataclass(frozen=True)
class DeepMemoryConfig:
    """One point of the deep memory family: memory form, attentional bias, retention, update.

    Attributes:
        depth: number of linear layers of the memory MLP (1 = a linear map ``x W_1``).
        hidden: hidden width for ``depth >= 2``; ``None`` means "read it off the initial
            weights". Must be ``None`` for ``depth == 1``.
        activation: ``gelu`` (exact, erf), ``silu``, ``relu`` or ``identity`` between layers.
        residual: ``M(x) = x + MLP(x)`` (needs ``K == V``).
        norm: parameter-free LayerNorm (eps 1e-5) on the MLP output, before the residual.
        bias: attentional bias ``dot | l2 | lp | huber | robust``.
        p: exponent of the ``lp`` bias, ``p >= 1`` (Moneta uses 3).
        huber_delta: constant threshold of the ``huber`` bias; ``None`` = a per-token tensor
            ``delta [B, T, H]`` is passed at call time (Yaad).
        robust_radius: radius ``Delta >= 0`` of the ``robust`` bias.
        retention_global: ``none | l2 | lq | kl | elastic_net``.
        q_norm: exponent of the ``lq`` retention, ``q > 1`` (Moneta uses 4).
        kl_scale: scale ``c > 0`` of the ``kl`` retention's simplex.
        l1: soft-threshold strength of ``elastic_net`` (threshold ``eta_t * l1``), ``>= 0``.
        momentum: ``gd_momentum`` update (needs ``mu``) instead of ``gd``.
        chunk_size: tokens per chunk whose gradients share the chunk's starting weights;
            1 is the token-exact recurrence.
        step: tokens per update step (titans-pytorch's ``chunk_size``): the gradients of a
            step's tokens (each weighted by its ``eta``) are summed into one step of the
            recurrence, with the momentum and retention of the step's last token, and token t
            reads with the weights after every step that ends at or before t. 1 (default) steps
            every token. Must divide ``chunk_size``; steps of more than one token run the
            step-parallel form (``steps.py``), titans-pytorch's ``NeuralMemory`` with
            ``chunk_size=step, batch_size=chunk_size``.
    """

    depth: int = 2
    hidden: int | None = None
    activation: str = "gelu"
    residual: bool = False
    norm: bool = False
    bias: str = "l2"
    p: float | None = None
    huber_delta: float | None = None
    robust_radius: float | None = None
    retention_global: str = "none"
    q_norm: float | None = None
    kl_scale: float | None = None
    l1: float | None = None
    momentum: bool = False
    chunk_size: int = 16
    step: int = 1

    def __post_init__(self) -> None:
        self._check_names()
        self._check_sizes()
        self._check_bias_fields()
        self._check_retention_fields()

    @property
    def linear_retention(self) -> bool:
        """True when weights are a linear function of the gradients (dual form applies)."""
        return self.retention_global not in NONLINEAR_RETENTIONS

    def _check_names(self) -> None:
        for name, value, allowed in (
            ("activation", self.activation, ACTIVATIONS),
            ("bias", self.bias, BIASES),
            ("retention_global", self.retention_global, RETENTIONS),
        ):
            if value not in allowed:
                raise ValueError(
                    f"DeepMemoryConfig.{name}={value!r} is not known; allowed: {', '.join(allowed)}"
                )

    def _check_sizes(self) -> None:
        if not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"DeepMemoryConfig.depth must be an integer >= 1, got {self.depth!r}")
        if self.depth == 1 and self.hidden is not None:
            raise ValueError("DeepMemoryConfig.hidden must be None for depth 1 (no hidden layer)")
        if self.hidden is not None and self.hidden < 1:
            raise ValueError(f"DeepMemoryConfig.hidden must be >= 1, got {self.hidden}")
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ValueError(
                f"DeepMemoryConfig.chunk_size must be an integer >= 1, got {self.chunk_size!r}"
            )
        if not isinstance(self.step, int) or self.step < 1 or self.chunk_size % self.step:
            raise ValueError(
                f"DeepMemoryConfig.step must be an integer >= 1 dividing chunk_size={self.chunk_size}, "
                f"got {self.step!r}"
            )
        if self.step > 1 and self.retention_global == "elastic_net":
            raise ValueError(
                "DeepMemoryConfig.step > 1 does not combine with retention_global='elastic_net' "
                "(its threshold acts after every token); use step=1"
            )

    def _check_bias_fields(self) -> None:
        for field, owner in _BIAS_FIELDS.items():
            if getattr(self, field) is not None and self.bias != owner:
                raise ValueError(
                    f"DeepMemoryConfig.{field} only applies to bias={owner!r} (bias is {self.bias!r})"
                )
        if self.huber_delta is not None and self.bias != "huber":
            raise ValueError(
                f"DeepMemoryConfig.huber_delta only applies to bias='huber' (bias is {self.bias!r})"
            )
        if self.bias == "lp" and (self.p is None or self.p < 1):
            raise ValueError(f"bias='lp' needs DeepMemoryConfig.p >= 1 (e.g. 3), got {self.p!r}")
        if self.bias == "huber" and self.huber_delta is not None and self.huber_delta <= 0:
            raise ValueError(f"DeepMemoryConfig.huber_delta must be > 0, got {self.huber_delta}")
        if self.bias == "robust" and (self.robust_radius is None or self.robust_radius < 0):
            raise ValueError(
                f"bias='robust' needs DeepMemoryConfig.robust_radius >= 0, got {self.robust_radius!r}"
            )

    def _check_retention_fields(self) -> None:
        for field, owner in _RETENTION_FIELDS.items():
            if getattr(self, field) is not None and self.retention_global != owner:
                raise ValueError(
                    f"DeepMemoryConfig.{field} only applies to retention_global={owner!r} "
                    f"(retention_global is {self.retention_global!r})"
                )
        ret = self.retention_global
        if ret == "lq" and (self.q_norm is None or self.q_norm <= 1):
            raise ValueError(
                f"retention_global='lq' needs DeepMemoryConfig.q_norm > 1 (e.g. 4), got {self.q_norm!r}"
            )
        if ret == "kl" and (self.kl_scale is None or self.kl_scale <= 0):
            raise ValueError(
                f"retention_global='kl' needs DeepMemoryConfig.kl_scale > 0, got {self.kl_scale!r}"
            )
        if ret == "elastic_net" and (self.l1 is None or self.l1 < 0):
            raise ValueError(
                f"retention_global='elastic_net' needs DeepMemoryConfig.l1 >= 0, got {self.l1!r}"
            )
