"""Deep memory kernel family: an MLP memory trained online per token or per chunk (README.md).

TTT-Linear/MLP, Titans, Moneta, Yaad and Memora are points of :class:`DeepMemoryConfig`.
"""
from __future__ import annotations

from torch import Tensor

from ..dispatch import resolve
from .chunk_torch import chunk_deep_memory
from .config import DeepMemoryConfig
from .memory import DeepMemoryState, Weights
from .naive import recurrent_deep_memory

__all__ = [
    "DeepMemoryConfig", "DeepMemoryState", "deep_memory", "recurrent_deep_memory",
    "chunk_deep_memory",
]


def deep_memory(
    q: Tensor, k: Tensor, v: Tensor, eta: Tensor, init_weights: Weights, cfg: DeepMemoryConfig,
    g: Tensor | None = None, mu: Tensor | None = None, lam: Tensor | None = None,
    delta: Tensor | None = None, initial_state: DeepMemoryState | None = None,
    output_final_state: bool = False, backend: str | None = None,
) -> tuple[Tensor, DeepMemoryState | None]:
    """Run the deep memory on ``backend`` (``naive | chunk | triton``; default by device).

    q, k: [B, T, H, K]; v: [B, T, H, V]; eta (step size), g (log retention), mu (momentum),
    lam (weight decay), delta (huber threshold): [B, T, H]; init_weights: per layer
    [H, d_in, d_out]. Returns ``(o [B, T, H, V], final state or None)``.
    """
    choice = resolve(backend, q.device)
    if choice == "naive":
        fn = recurrent_deep_memory
    elif choice == "chunk":
        fn = chunk_deep_memory
    else:
        from .chunk import triton_deep_memory  # imports triton only when asked for

        fn = triton_deep_memory
    return fn(q, k, v, eta, init_weights, cfg, g, mu, lam, delta, initial_state, output_final_state)
