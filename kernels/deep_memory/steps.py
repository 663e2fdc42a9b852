"""Step-parallel deep memory (``cfg.step > 1``): titans-pytorch's chunked update, computed at once.

When the memory advances once per step of S tokens and every gradient of a span of R =
``cfg.chunk_size`` tokens is taken at the span's starting weights ``W_ref``, the span needs no
sequential loop (README.md, "Steps of several tokens"):

1. the keys of the whole span go forward and backward through the MLP at ``W_ref`` at once
   (:func:`chunk_torch.key_gradients`); step n's gradient is ``G_n = sum_{t in n} eta_t a_t
   delta_t^T`` per layer, one batched matmul over the steps;
2. the recurrence over steps is linear in the G's: the state after step n is
   ``A_n = gam_n A_0 + e_n Z_0 + sum_{m<=n} dmat_{nm} G_m`` with the coefficients of the dual
   form at step granularity (:func:`chunk_torch.dual_coefficients`), one batched matmul
   ``[N, N] @ [N, d_in d_out]`` per layer;
3. token t reads with the weights after step ``(t + 1) // S`` of its span (0 = the state the span
   starts with): the queries, shifted by one token and cut into groups of S, read through their
   group's weights, one batched matmul per layer.

Every part is a library matmul or an elementwise op (cuBLAS on CUDA): the per-step weights are
materialised ([B, H, N + 1, d_in, d_out] per layer, N = R / S), which costs less than the
quadratic dual form whenever ``d_in d_out < R S / 2`` (titans-pytorch's shape: 65,536 against
131,072). Spans run one after another (a span's ``W_ref`` is the previous span's last state).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .chunk_torch import dual_coefficients, key_gradients
from .config import DeepMemoryConfig
from .memory import (
    DeepMemoryState, Weights, accum_dtype, check_inputs, log_decay, mlp_output, per_token_delta,
    read_weights, start_state,
)


def step_deep_memory(
    q: Tensor, k: Tensor, v: Tensor, eta: Tensor, init_weights: Weights, cfg: DeepMemoryConfig,
    g: Tensor | None = None, mu: Tensor | None = None, lam: Tensor | None = None,
    delta: Tensor | None = None, initial_state: DeepMemoryState | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, DeepMemoryState | None]:
    """Deep memory with steps of ``cfg.step`` tokens; same API and result as
    ``recurrent_deep_memory``. q, k: [B, T, H, K]; v: [B, T, H, V]; eta, g, mu, lam, delta:
    [B, T, H]."""
    check_inputs(q, k, v, eta, init_weights, cfg, g, mu, lam, delta)
    B, T, H, _ = q.shape
    dt = accum_dtype(q)
    heads_first = lambda x: x.to(dt).transpose(1, 2)  # noqa: E731  [B, T, H, ...] -> [B, H, T, ...]
    qh, kh, vh, eh = (heads_first(x) for x in (q, k, v, eta))  # [B, H, T, D], eta [B, H, T]
    la = heads_first(log_decay(g, lam, cfg, q))  # [B, H, T]
    mh = heads_first(mu) if mu is not None else None
    dl = per_token_delta(cfg, delta, q)
    dh = heads_first(dl) if dl is not None else None
    state = start_state(init_weights, cfg, B, initial_state, dt)
    outs = []
    for r0 in range(0, T, cfg.chunk_size):
        span = slice(r0, min(r0 + cfg.chunk_size, T))
        o, state = _span(qh[:, :, span], kh[:, :, span], vh[:, :, span], eh[:, :, span], la[:, :, span],
                         mh[:, :, span] if mh is not None else None,
                         dh[:, :, span] if dh is not None else None, state, cfg)
        outs.append(o)
    o = torch.cat(outs, dim=2).transpose(1, 2)  # [B, T, H, V]
    return o.to(v.dtype), (state if output_final_state else None)


def _span(q: Tensor, k: Tensor, v: Tensor, eta: Tensor, log_a: Tensor, mu: Tensor | None,
          d: Tensor | None, state: DeepMemoryState, cfg: DeepMemoryConfig) -> tuple[Tensor, DeepMemoryState]:
    """One span of R tokens (heads first: q, k [B, H, R, K], v [B, H, R, V], per-token
    scalars [B, H, R]). Returns (o [B, H, R, V], the state after the span's last step)."""
    S, R = cfg.step, q.shape[2]
    N = -(-R // S)  # steps; the last one partial when S does not divide R
    ins, deltas = key_gradients(read_weights(state.weights, cfg), k, v, d, cfg)  # per layer [B, H, R, d]
    last = torch.arange(S - 1, N * S, S, device=q.device).clamp_max(R - 1)  # [N] each step's last token
    co = dual_coefficients(log_a[..., last], torch.ones_like(log_a[..., last]),
                           mu[..., last] if mu is not None else None)  # [B, H, N] and [B, H, N, N]
    weights, momenta, reads = [], [], []
    for i, (a, dz) in enumerate(zip(ins, deltas)):
        g_steps = _step_gradients(a * eta.unsqueeze(-1), dz, S, N)  # [B, H, N, d_in, d_out]
        w, z = _after_steps(state.weights[i], state.momentum[i] if cfg.momentum else None, g_steps, co)
        weights.append(w[:, :, -1])
        momenta.append(z)
        reads.append(torch.cat([state.weights[i].unsqueeze(2), w], dim=2))  # [B, H, N + 1, d_in, d_out]
    o = _read(q, read_weights(tuple(reads), cfg), S, N, cfg)  # [B, H, R, V]
    return o, DeepMemoryState(tuple(weights), tuple(momenta) if cfg.momentum else None)


def _step_gradients(a: Tensor, dz: Tensor, S: int, N: int) -> Tensor:
    """``G_n = sum_{t in step n} a_t dz_t^T``: a [B, H, R, d_in] (eta folded in), dz [B, H, R,
    d_out] -> [B, H, N, d_in, d_out]; a partial last step is zero-padded."""
    pad = N * S - a.shape[2]
    a = F.pad(a, (0, 0, 0, pad)).unflatten(2, (N, S))  # [B, H, N, S, d_in]
    dz = F.pad(dz, (0, 0, 0, pad)).unflatten(2, (N, S))  # [B, H, N, S, d_out]
    return a.transpose(-1, -2) @ dz  # [B, H, N, d_in, d_out]


def _after_steps(w0: Tensor, z0: Tensor | None, g_steps: Tensor,
                 co: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
    """States after every step, ``A_n = gam_n A_0 + e_n Z_0 + sum_m dmat_nm G_m`` (w0, z0:
    [B, H, d_in, d_out]; g_steps [B, H, N, d_in, d_out]) -> ([B, H, N, d_in, d_out], the last
    momentum ``Z_N = mom_N Z_0 + sum_m zmat_Nm G_m`` or None)."""
    flat = g_steps.flatten(-2)  # [B, H, N, d_in * d_out]
    w = (co["dmat"] @ flat).unflatten(-1, g_steps.shape[-2:])  # [B, H, N, d_in, d_out]
    w = w + co["gam"][..., None, None] * w0.unsqueeze(2)
    if z0 is None:
        return w, None
    w = w + co["e"][..., None, None] * z0.unsqueeze(2)
    z_last = (co["zmat"][:, :, -1:] @ flat).unflatten(-1, g_steps.shape[-2:])[:, :, 0]  # [B, H, d_in, d_out]
    return w, z_last + co["mom"][:, :, -1, None, None] * z0


def _read(q: Tensor, weights: Weights, S: int, N: int, cfg: DeepMemoryConfig) -> Tensor:
    """Token t reads with ``weights[:, :, (t + 1) // S]`` (weights per layer [B, H, N + 1, d_in,
    d_out]): the queries shifted by one token, in N + 1 groups of S. q [B, H, R, K] -> [B, H, R, V]."""
    R = q.shape[2]
    x = F.pad(q, (0, 0, 1, (N + 1) * S - R - 1)).unflatten(2, (N + 1, S))  # [B, H, N + 1, S, K]
    o = mlp_output(weights, x, cfg, per_row=False)  # [B, H, N + 1, S, V]
    return o.flatten(2, 3)[:, :, 1:R + 1]  # [B, H, R, V]
