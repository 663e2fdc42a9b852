"""Gated delta rule kernel family: DeltaNet, Gated DeltaNet, KDA, Longhorn (see README.md)."""
from __future__ import annotations

from ..amp import outside_autocast
from ..dispatch import resolve
from ._common import Result, Tensor
from .chunk_torch import chunk_delta_rule_torch
from .naive import recurrent_delta_rule

__all__ = [
    "delta_rule", "recurrent_delta_rule", "chunk_delta_rule_torch", "chunk_delta_rule", "longhorn_beta",
]


def chunk_delta_rule(*args: object, **kwargs: object) -> Result:
    """The Triton kernel (imported on first use, so the package loads without Triton)."""
    from .chunk import chunk_delta_rule as triton_delta_rule

    return triton_delta_rule(*args, **kwargs)  # type: ignore[arg-type]


@outside_autocast
def delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Tensor | None = None,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    backend: str | None = None,
    chunk_size: int = 64,
) -> Result:
    """Gated delta rule through the backend ``resolve(backend, q.device)`` picks.

    ``naive``: token-by-token reference; ``chunk``: PyTorch chunked form (``chunk_size``);
    ``triton``: the Triton kernels (chunk length fixed at 64). Returns ``(o, final_state)``.
    """
    choice = resolve(backend, q.device)
    common = dict(
        scale=scale, initial_state=initial_state, output_final_state=output_final_state,
        cu_seqlens=cu_seqlens,
    )
    if choice == "naive":
        return recurrent_delta_rule(q, k, v, beta, g, **common)
    if choice == "chunk":
        return chunk_delta_rule_torch(q, k, v, beta, g, chunk_size=chunk_size, **common)
    return chunk_delta_rule(q, k, v, beta, g, **common)


def longhorn_beta(beta: Tensor, k: Tensor) -> Tensor:
    """Longhorn's implicit step as a delta-rule step size: beta / (1 + beta ||k||^2), [B, T, H]."""
    b32 = beta.float()  # [B, T, H]
    return (b32 / (1.0 + b32 * k.float().pow(2).sum(-1))).to(beta.dtype)
