"""Deep memory kernel family: an MLP memory trained online per token or per chunk (README.md).

TTT-Linear/MLP, Titans, Moneta, Yaad and Memora are points of :class:`DeepMemoryConfig`.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

from ..amp import outside_autocast
from ..dispatch import resolve
from .chunk_torch import chunk_deep_memory
from .config import DeepMemoryConfig
from .memory import DeepMemoryState, Weights, accum_dtype, start_state
from .naive import recurrent_deep_memory
from .steps import step_deep_memory

__all__ = [
    "DeepMemoryConfig", "DeepMemoryState", "deep_memory", "recurrent_deep_memory",
    "chunk_deep_memory", "step_deep_memory",
]


@outside_autocast
def deep_memory(
    q: Tensor, k: Tensor, v: Tensor, eta: Tensor, init_weights: Weights, cfg: DeepMemoryConfig,
    g: Tensor | None = None, mu: Tensor | None = None, lam: Tensor | None = None,
    delta: Tensor | None = None, initial_state: DeepMemoryState | None = None,
    output_final_state: bool = False, backend: str | None = None, cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, DeepMemoryState | None]:
    """Run the deep memory on ``backend`` (``naive | chunk | triton``; default by device).

    q, k: [B, T, H, K]; v: [B, T, H, V]; eta (step size), g (log retention), mu (momentum),
    lam (weight decay), delta (huber threshold): [B, T, H]; init_weights: per layer
    [H, d_in, d_out]. Returns ``(o [B, T, H, V], final state or None)``.
    With ``cu_seqlens: [N+1]`` (B == 1) the packed sequences each start from ``init_weights``
    (or from row i of ``initial_state``, whose tensors are then [N, H, d_in, d_out]) and the final
    state has N rows.
    """
    fn = _backend_fn(resolve(backend, q.device), cfg)
    if cu_seqlens is not None:
        return _varlen(fn, q, k, v, eta, init_weights, cfg, (g, mu, lam, delta), initial_state,
                       output_final_state, cu_seqlens)
    return fn(q, k, v, eta, init_weights, cfg, g, mu, lam, delta, initial_state, output_final_state)


def _backend_fn(choice: str, cfg: DeepMemoryConfig):
    """The implementation behind a backend name; steps of several tokens (``cfg.step > 1``) run
    the step-parallel form on the chunk and Triton backends (library matmuls, ``steps.py``)."""
    if choice == "naive":
        return recurrent_deep_memory
    if cfg.step > 1:  # the Triton backend reads through Triton kernels
        return step_deep_memory if choice == "chunk" else functools.partial(step_deep_memory, use_triton=True)
    if choice == "chunk":
        return chunk_deep_memory
    from .chunk import triton_deep_memory  # imports triton only when asked for

    return triton_deep_memory


def _varlen(fn, q: Tensor, k: Tensor, v: Tensor, eta: Tensor, init_weights: Weights, cfg: DeepMemoryConfig,
            per_token: tuple, initial_state: DeepMemoryState | None, output_final_state: bool,
            cu_seqlens: Tensor) -> tuple[Tensor, DeepMemoryState | None]:
    """Run each packed sequence of a ``B == 1`` batch on its own and join the results."""
    if q.shape[0] != 1:
        raise ValueError(f"cu_seqlens needs a packed batch with B == 1, got B = {q.shape[0]}")
    bounds = cu_seqlens.tolist()
    outs, finals = [], []
    for i, (t0, t1) in enumerate(zip(bounds[:-1], bounds[1:])):
        h0 = None
        if initial_state is not None:
            h0 = DeepMemoryState(tuple(w[i:i + 1] for w in initial_state.weights),
                                 None if initial_state.momentum is None else
                                 tuple(z[i:i + 1] for z in initial_state.momentum))
        if t1 == t0:  # an empty sequence: no output, the state it started with
            outs.append(q.new_zeros(1, 0, q.shape[2], v.shape[3], dtype=v.dtype))
            finals.append(start_state(init_weights, cfg, 1, h0, accum_dtype(q)))
            continue
        part = [x[:, t0:t1] if x is not None else None for x in per_token]  # g, mu, lam, delta
        o, s = fn(q[:, t0:t1], k[:, t0:t1], v[:, t0:t1], eta[:, t0:t1], init_weights, cfg, *part,
                  h0, output_final_state)
        outs.append(o)  # [1, T_i, H, V]
        finals.append(s)
    o = torch.cat(outs, dim=1)  # [1, T, H, V]
    if not output_final_state:
        return o, None
    weights = tuple(torch.cat(ws, 0) for ws in zip(*(s.weights for s in finals)))  # [N, H, d_in, d_out]
    momentum = None if finals[0].momentum is None else tuple(
        torch.cat(zs, 0) for zs in zip(*(s.momentum for s in finals)))
    return o, DeepMemoryState(weights, momentum)
