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
   starts with): tokens 0..S-2 read the start state, the others fall into N groups of S, each read
   through its group's weights, one batched matmul per layer.

The per-step sums are materialised ([B, H, N, d_in, d_out] per layer, N = R / S), which costs
less than the quadratic dual form whenever ``d_in d_out < R S / 2`` (titans-pytorch's shape:
65,536 against 131,072). Spans run one after another (a span's ``W_ref`` is the previous span's
last state). In PyTorch every part is a library matmul or an elementwise op; on the Triton
backend (depth 2, widths at most 128) 1. runs in ``_steps_keys.py`` and 3. (with the sums'
backward) in ``_steps_read.py``, no ``[S, hidden]`` tile reaching memory.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..dispatch import steps_triton_supported
from .chunk_torch import dual_coefficients, key_gradients
from .config import DeepMemoryConfig
from .memory import (
    DeepMemoryState, Weights, accum_dtype, activation, check_inputs, finish_output, log_decay,
    mlp_output, per_token_delta, read_weights, start_state,
)


def step_deep_memory(
    q: Tensor, k: Tensor, v: Tensor, eta: Tensor, init_weights: Weights, cfg: DeepMemoryConfig,
    g: Tensor | None = None, mu: Tensor | None = None, lam: Tensor | None = None,
    delta: Tensor | None = None, initial_state: DeepMemoryState | None = None,
    output_final_state: bool = False, use_triton: bool = False,
) -> tuple[Tensor, DeepMemoryState | None]:
    """Deep memory with steps of ``cfg.step`` tokens; same API and result as
    ``recurrent_deep_memory``. q, k: [B, T, H, K]; v: [B, T, H, V]; eta, g, mu, lam, delta:
    [B, T, H]. ``use_triton``: the keys and the reads through the Triton kernels of
    ``_steps_keys.py`` and ``_steps_read.py`` where the shapes fit (the Triton backend's choice)."""
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
    kern = _kernels(cfg, q, v, use_triton)
    outs = []
    for r0 in range(0, T, cfg.chunk_size):
        span = slice(r0, min(r0 + cfg.chunk_size, T))
        more = output_final_state or span.stop < T  # the momentum at the span's end is needed
        o, state = _span(qh[:, :, span], kh[:, :, span], vh[:, :, span], eh[:, :, span], la[:, :, span],
                         mh[:, :, span] if mh is not None else None,
                         dh[:, :, span] if dh is not None else None, state, cfg, more, kern)
        outs.append(o)
    o = torch.cat(outs, dim=2).transpose(1, 2)  # [B, T, H, V]
    return o.to(v.dtype), (state if output_final_state else None)


def _span(q: Tensor, k: Tensor, v: Tensor, eta: Tensor, log_a: Tensor, mu: Tensor | None,
          d: Tensor | None, state: DeepMemoryState, cfg: DeepMemoryConfig,
          momentum_out: bool, kern: "_Kernels") -> tuple[Tensor, DeepMemoryState]:
    """One span of R tokens (heads first: q, k [B, H, R, K], v [B, H, R, V], per-token
    scalars [B, H, R]). Returns (o [B, H, R, V], the state after the span's last step; its
    momentum is None unless ``momentum_out``: forming it reads every step's gradient again)."""
    S, R = cfg.step, q.shape[2]
    N = -(-R // S)  # steps; the last one partial when S does not divide R
    last = torch.arange(S - 1, N * S, S, device=q.device).clamp_max(R - 1)  # [N] each step's last token
    co = dual_coefficients(log_a[..., last], torch.ones_like(log_a[..., last]),
                           mu[..., last] if mu is not None else None)  # [B, H, N] and [B, H, N, N]
    all_steps = kern.keys(k, v, eta, d, read_weights(state.weights, cfg), cfg, N)  # per layer [B, H, N, d_in, d_out]
    z0s = state.momentum if cfg.momentum else (None,) * cfg.depth
    o, lasts = kern.sums_and_reads(q, state, all_steps, co, S, N, cfg)
    weights = tuple(last + _start_part(w0, z0, co, -1) for last, w0, z0 in zip(lasts, state.weights, z0s))
    momenta = None
    if cfg.momentum and momentum_out:
        momenta = tuple(_last_momentum(g, z0, co) for g, z0 in zip(all_steps, z0s))
    return o, DeepMemoryState(weights, momenta)


def _sums_and_reads(q: Tensor, state: DeepMemoryState, all_steps: list[Tensor], co: dict[str, Tensor],
                    S: int, N: int, cfg: DeepMemoryConfig) -> tuple[Tensor, list[Tensor]]:
    """The per-step sums ``Σ = dmat @ G`` (cuBLAS) and the reads in PyTorch: (o [B, H, R, V], the
    last sums per layer [B, H, d_in, d_out])."""
    sums = [(co["dmat"] @ g.flatten(-2)).unflatten(-1, g.shape[-2:]) for g in all_steps]  # [B, H, N, d_in, d_out]
    if cfg.linear_retention:
        o = _read_linear(q, state, sums, co, S, N, cfg)
    else:  # a nonlinear read map needs every step's whole state
        z0s = state.momentum if cfg.momentum else (None,) * cfg.depth
        full = tuple(w + _start_part(w0, z0, co, slice(None)) for w, w0, z0 in zip(sums, state.weights, z0s))
        o = _read(q, read_weights(state.weights, cfg), read_weights(full, cfg), S, N, cfg)
    return o, [sm[:, :, -1] for sm in sums]


class _Kernels(NamedTuple):
    """How a chunk computes its steps' gradients (``_keys_torch`` or the Triton keys) and its
    sums and reads (``_sums_and_reads`` or, for an identity read map, the Triton ones)."""

    keys: Callable
    sums_and_reads: Callable


def _kernels(cfg: DeepMemoryConfig, q: Tensor, v: Tensor, triton: bool) -> _Kernels:
    """PyTorch, or (``triton``, depth 2, K, V and S at most 128) ``_steps_keys.py`` and, for an
    identity read map, ``_steps_read.py``."""
    if not (triton and steps_triton_supported(cfg.depth, q.shape[-1], v.shape[-1], cfg.step)):
        return _Kernels(_keys_torch, _sums_and_reads)
    from .chunk import dot_precision  # imports triton only when asked for

    prec = dot_precision(q.dtype)
    reads = (lambda *a: _steps_read_triton(*a, prec=prec)) if cfg.linear_retention else _sums_and_reads
    return _Kernels(lambda *a: _keys_triton(*a, prec=prec), reads)


def _keys_torch(k: Tensor, v: Tensor, eta: Tensor, d: Tensor | None, w_ref: Weights,
                cfg: DeepMemoryConfig, N: int) -> list[Tensor]:
    """Every step's gradient sum per layer, ``G_n = Σ_{t in n} eta_t a_t δ_tᵀ`` [B, H, N, d_in,
    d_out], from the keys' layer inputs a and errors δ at ``w_ref``."""
    ins, deltas = key_gradients(w_ref, k, v, d, cfg)  # per layer [B, H, R, d]
    out = []
    for a, dz in zip(ins, deltas):
        if a.shape[-1] <= dz.shape[-1]:  # eta scales the narrower factor
            out.append(_step_gradients(a * eta.unsqueeze(-1), dz, cfg.step, N))
        else:
            out.append(_step_gradients(a, dz * eta.unsqueeze(-1), cfg.step, N))
    return out


def _keys_triton(k: Tensor, v: Tensor, eta: Tensor, d: Tensor | None, w_ref: Weights,
                 cfg: DeepMemoryConfig, N: int, prec: str) -> list[Tensor]:
    """:func:`_keys_torch` through ``_steps_keys.StepKeys`` (depth 2, no token-sized tensor)."""
    from ._steps_keys import StepKeys

    B, H = k.shape[:2]
    bh = lambda t: t.flatten(0, 1)  # noqa: E731
    dd = bh(d) if d is not None else torch.ones_like(bh(eta))
    bp = cfg.p if cfg.bias == "lp" else (cfg.robust_radius if cfg.bias == "robust" else 0.0)
    g1, g2 = StepKeys.apply(bh(k), bh(v), bh(eta), dd, bh(w_ref[0]), bh(w_ref[1]), cfg.step, cfg.activation,
                            cfg.norm, cfg.residual, cfg.bias, float(bp), prec)
    return [g1.unflatten(0, (B, H)), g2.unflatten(0, (B, H))]


def _steps_read_triton(q: Tensor, state: DeepMemoryState, all_steps: list[Tensor], co: dict[str, Tensor],
                       S: int, N: int, cfg: DeepMemoryConfig, prec: str) -> tuple[Tensor, list[Tensor]]:
    """The per-step sums and the reads through ``_steps_read.StepsRead`` (depth 2): the queries in
    N + 1 groups of S, shifted by one token (group 0 reads the start state). Returns (o [B, H, R,
    V], the last sums per layer [B, H, d_in, d_out])."""
    from ._steps_read import StepsRead

    B, H, R, _ = q.shape
    x = F.pad(q, (0, 0, 1, (N + 1) * S - R - 1)).unflatten(2, (N + 1, S))  # [B, H, N + 1, S, K]
    bh = lambda t: t.flatten(0, 1) if t is not None else None  # noqa: E731
    w1, w2 = state.weights
    z1, z2 = state.momentum if cfg.momentum else (None, None)
    o, last1, last2 = StepsRead.apply(bh(x), bh(w1), bh(z1), bh(w2), bh(z2), bh(all_steps[0]), bh(all_steps[1]),
                                      bh(co["dmat"]), bh(co["gam"]), bh(co.get("e")), cfg.activation, cfg.norm,
                                      cfg.residual, prec)  # [B·H, N + 1, S, V]
    o = o.unflatten(0, (B, H)).flatten(2, 3)[:, :, 1:R + 1]
    return o, [last1.unflatten(0, (B, H)), last2.unflatten(0, (B, H))]


def _last_momentum(g_steps: Tensor, z0: Tensor, co: dict[str, Tensor]) -> Tensor:
    """``Z_N = mom_N Z_0 + Σ_m zmat_Nm G_m`` (g_steps [B, H, N, d_in, d_out]) -> [B, H, d_in, d_out]."""
    zsum = (co["zmat"][:, :, -1:] @ g_steps.flatten(-2)).unflatten(-1, g_steps.shape[-2:])[:, :, 0]
    return zsum + co["mom"][:, :, -1, None, None] * z0


def _start_part(w0: Tensor, z0: Tensor | None, co: dict[str, Tensor], n: int | slice) -> Tensor:
    """``gam_n A_0 + e_n Z_0``, the start state's share of the state after step n (``n`` an
    index: [B, H, d_in, d_out]; a slice: [B, H, n, d_in, d_out])."""
    if not isinstance(n, int):
        w0, z0 = w0.unsqueeze(2), (z0.unsqueeze(2) if z0 is not None else None)
    out = co["gam"][:, :, n, None, None] * w0
    return out if z0 is None else out + co["e"][:, :, n, None, None] * z0


def _step_gradients(a: Tensor, dz: Tensor, S: int, N: int) -> Tensor:
    """``G_n = sum_{t in step n} a_t dz_t^T``: a [B, H, R, d_in] (eta folded in), dz [B, H, R,
    d_out] -> [B, H, N, d_in, d_out]; a partial last step is zero-padded."""
    pad = N * S - a.shape[2]
    if pad:  # F.pad copies even when there is nothing to pad
        a, dz = F.pad(a, (0, 0, 0, pad)), F.pad(dz, (0, 0, 0, pad))
    return a.unflatten(2, (N, S)).transpose(-1, -2) @ dz.unflatten(2, (N, S))  # [B, H, N, d_in, d_out]


def _split(q: Tensor, S: int, N: int) -> tuple[Tensor, Tensor]:
    """Token t reads with the state after step ``(t + 1) // S``: tokens 0..S-2 read the start
    state (group 0, padded in front to S rows), tokens S-1.. fall into N groups of S
    (zero-padded at the end). q [B, H, R, K] -> ([B, H, S, K], [B, H, N, S, K]), both contiguous."""
    R = q.shape[2]
    first = F.pad(q[:, :, :S - 1], (0, 0, 1, max(0, S - 1 - R)))  # [B, H, S, K]
    rest = F.pad(q[:, :, S - 1:], (0, 0, 0, N * S - max(0, R - S + 1))).unflatten(2, (N, S))
    return first, rest


def _join(first: Tensor, rest: Tensor, R: int) -> Tensor:
    """The inverse of :func:`_split`: ([B, H, S, V], [B, H, N, S, V]) -> [B, H, R, V]."""
    return torch.cat([first[:, :, 1:], rest.flatten(2, 3)], dim=2)[:, :, :R]


def _read(q: Tensor, start: Weights, steps: Weights, S: int, N: int, cfg: DeepMemoryConfig) -> Tensor:
    """Group 0 reads with ``start`` (per layer [B, H, d_in, d_out]), group j > 0 with
    ``steps[:, :, j - 1]`` (per layer [B, H, N, d_in, d_out]). q [B, H, R, K] -> [B, H, R, V]."""
    x0, xr = _split(q, S, N)  # [B, H, S, K], [B, H, N, S, K]
    first = mlp_output(start, x0, cfg, per_row=False)  # [B, H, S, V]
    return _join(first, mlp_output(steps, xr, cfg, per_row=False), q.shape[2])


def _read_linear(q: Tensor, state: DeepMemoryState, sums: list[Tensor], co: dict[str, Tensor],
                 S: int, N: int, cfg: DeepMemoryConfig) -> Tensor:
    """:func:`_read` for an identity read map, the start state's share kept apart: group j > 0
    reads layer by layer ``x W_j = gam_j (x W_0) + e_j (x Z_0) + x Σ_j`` (``Σ_j = sums[:, :, j -
    1]``, the gradients' share), so no ``[N, d_in, d_out]`` sum with the start state is formed;
    group 0 reads the start state. q [B, H, R, K] -> [B, H, R, V]."""
    x0, xr = _split(q, S, N)  # [B, H, S, K], [B, H, N, S, K]
    first = mlp_output(state.weights, x0, cfg, per_row=False)  # [B, H, S, V]
    gam = co["gam"][..., None, None]  # [B, H, N, 1, 1]
    e = co["e"][..., None, None] if cfg.momentum else None
    h = xr
    for i, (w0, sm) in enumerate(zip(state.weights, sums)):
        z = _start_share(h, w0, state.momentum[i] if e is not None else None, gam, e) + h @ sm
        h = activation(z, cfg.activation) if i < cfg.depth - 1 else z  # [B, H, N, S, d_out]
    return _join(first, finish_output(h, xr, cfg), q.shape[2])


def _start_share(h: Tensor, w0: Tensor, z0: Tensor | None, gam: Tensor, e: Tensor | None) -> Tensor:
    """``gam (h W_0) + e (h Z_0)`` per group (h [B, H, G, S, d_in]; w0, z0 [B, H, d_in, d_out];
    gam, e [B, H, G, 1, 1]) -> [B, H, G, S, d_out]. The scales go on the narrower side: on the
    inputs, W_0 and Z_0 stacked into one matmul over ``2 d_in``; or on the two outputs."""
    if h.shape[-1] <= w0.shape[-1]:
        if z0 is None:
            return _shared(h * gam, w0)
        return _shared(torch.cat([h * gam, h * e], -1), torch.cat([w0, z0], -2))
    out = gam * _shared(h, w0)
    return out if z0 is None else out + e * _shared(h, z0)


def _shared(h: Tensor, w: Tensor) -> Tensor:
    """``h @ w`` for weights shared by every group: h [B, H, G, S, d_in], w [B, H, d_in, d_out]
    -> [B, H, G, S, d_out], one matmul over the flattened groups (broadcasting ``w`` over G
    would copy it G times)."""
    return (h.flatten(2, 3) @ w).unflatten(2, h.shape[2:4])
