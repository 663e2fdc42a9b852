"""Gated linear attention: ``S_t = diag(exp(g_t)) S_{t-1} + k_t v_tᵀ``, ``o_t = scale · S_tᵀ q_t``.

One family serves linear attention (``g=None``), RetNet / Lightning / Mamba2 (a scalar log-decay
per head, ``g: [B, T, H]``) and GLA (per-channel ``g: [B, T, H, K]``). Three backends with one
contract (see ``README.md`` here and ``kernels/README.md``):

- ``naive``: ``recurrent_gla``, the token-by-token float32 ground truth;
- ``chunk``: ``chunk_gla_torch``, the chunked algorithm in PyTorch (autograd backward);
- ``triton``: ``chunk_gla``, Triton forward and backward kernels.
"""
from __future__ import annotations

from torch import Tensor

from ..amp import outside_autocast
from ..dispatch import resolve
from .chunk_torch import chunk_gla_torch
from .naive import recurrent_gla

__all__ = ["gated_linear_attention", "recurrent_gla", "chunk_gla_torch", "chunk_gla"]


def chunk_gla(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None,
              scale: float | None = None, initial_state: Tensor | None = None,
              output_final_state: bool = False, cu_seqlens: Tensor | None = None,
              chunk_size: int = 64) -> tuple[Tensor, Tensor | None]:
    """Triton chunked gated linear attention (``chunk.py``, imported on first use so that
    ``TRITON_INTERPRET`` may still be set after this package is imported)."""
    from .chunk import chunk_gla as triton_chunk_gla

    return triton_chunk_gla(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens,
                            chunk_size)


@outside_autocast
def gated_linear_attention(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None,
                           scale: float | None = None, initial_state: Tensor | None = None,
                           output_final_state: bool = False, cu_seqlens: Tensor | None = None,
                           backend: str | None = None,
                           chunk_size: int = 64) -> tuple[Tensor, Tensor | None]:
    """Gated linear attention on the backend ``resolve(backend, q.device)`` picks.

    Returns ``(o [B, T, H, V] in v's dtype, final_state [N, H, K, V] fp32 or None)``.
    """
    name = resolve(backend, q.device)
    kwargs = dict(scale=scale, initial_state=initial_state,
                  output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    if name == "naive":
        return recurrent_gla(q, k, v, g, **kwargs)
    if name == "chunk":
        return chunk_gla_torch(q, k, v, g, chunk_size=chunk_size, **kwargs)
    return chunk_gla(q, k, v, g, chunk_size=chunk_size, **kwargs)
