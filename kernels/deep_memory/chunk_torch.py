"""Chunk-wise deep memory in PyTorch: analytic per-token gradients and the TTT dual form.

Two phases (README.md, "Dual form"):
1. a loop over chunks (sequential, the weights a chunk starts with depend nonlinearly on the
   previous chunks): forward the chunk's keys through the MLP at the chunk's starting weights
   W_0, backpropagate the bias by hand (layer inputs ``a_s`` and output errors ``delta_s``: the
   per-token gradient of layer l is the outer product ``a_s delta_s^T``), and move the state to
   the chunk's end with decay-weighted sums of these outer products;
2. all chunks at once: the read-out of token t with ``W_t = gam_t W_0 + e_t Z_0 + sum_{s<=t}
   D'_{ts} a_s delta_s^T`` is, layer by layer, ``(gam_t x) W_0 + (e_t x) Z_0 +
   (tril(x a^T) * D') delta``: a masked matmul, no per-token weights.

Nonlinear global retentions (lq, kl, elastic_net) break the dual form; they take the
materialised path: per chunk the per-token weights are built ([B, H, C, d_in, d_out] for one
chunk at a time) and the queries read through them.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor

from .config import DeepMemoryConfig
from .memory import (
    DeepMemoryState, Weights, accum_dtype, activation, activation_backward, advance_state,
    bias_grad, check_inputs, finish_output, layer_norm, layer_norm_backward, log_decay,
    mlp_output, per_token_delta, read_weights, start_state,
)

# readout(x [N,C,DK], w0 [N,DK,DV], gam [N,C], z0 [N,DK,DV] | None, e [N,C] | None,
#         a [N,C,DK], d [N,C,C], u [N,C,DV]) -> [N,C,DV]
Readout = Callable[..., Tensor]
# phase1(state, kc, vc, dc, chunk-end coefficient table, cfg) -> (chunk-start weights per layer,
# chunk-start momenta per layer or None, layer inputs per layer, output errors per layer, final
# state); every per-layer tensor chunk-major [n, B, H, ...] (contiguous: the read-out flattens
# its first three dims without a copy)
Phase1Out = tuple[list[Tensor], list[Tensor] | None, list[Tensor], list[Tensor], DeepMemoryState]
Phase1 = Callable[..., Phase1Out]
# dual(qc, kc, vc, dc, co, T, state, cfg) -> (o [B, H, n, C, V], final state): the whole dual
# form (phase 1 and the read-out) at once, in place of _dual_form (the Triton backend's fused.py)
DualForm = Callable[..., tuple[Tensor, DeepMemoryState]]


def readout_torch(x: Tensor, w0: Tensor, gam: Tensor, z0: Tensor | None, e: Tensor | None,
                  a: Tensor, d: Tensor, u: Tensor) -> Tensor:
    """``gam (x W_0) + e (x Z_0) + (tril(x a^T) * d) @ u``: the dual-form read-out of one layer,
    per chunk (``gam, e``: a scale per row; ``z0 = e = None`` without momentum)."""
    C = x.shape[-2]
    mask = torch.ones(C, C, dtype=torch.bool, device=x.device).tril()  # [C, C]
    att = (x @ a.transpose(-1, -2)) * d  # [N, C, C]
    out = gam.unsqueeze(-1) * (x @ w0) + att.masked_fill(~mask, 0.0) @ u  # [N, C, DV]
    return out + e.unsqueeze(-1) * (x @ z0) if z0 is not None else out


def _to_chunks(x: Tensor, C: int) -> Tensor:
    """[B, T, H, ...] -> [B, H, n, C, ...], zero-padded at the end."""
    B, T, H = x.shape[:3]
    n = -(-T // C)
    pad = [0, 0] * (x.dim() - 3) + [0, 0, 0, n * C - T]
    x = F.pad(x, pad)  # [B, n*C, H, ...]
    x = x.reshape(B, n, C, H, *x.shape[3:])  # [B, n, C, H, ...]
    return x.movedim(3, 1)  # [B, H, n, C, ...]


def _masked_ratio(cum: Tensor) -> Tensor:
    """``exp(cum_t - cum_s)`` for s <= t, 0 above the diagonal: [..., C] -> [..., C, C]."""
    C = cum.shape[-1]
    mask = torch.ones(C, C, dtype=torch.bool, device=cum.device).tril()  # [C, C]
    diff = cum.unsqueeze(-1) - cum.unsqueeze(-2)  # [..., C, C]
    return torch.exp(torch.where(mask, diff, torch.full_like(diff, float("-inf"))))


def dual_coefficients(log_a: Tensor, eta: Tensor, mu: Tensor | None) -> dict[str, Tensor]:
    """Intra-chunk coefficients, all [B, H, n, C] or [B, H, n, C, C]:

    ``W_t = gam_t W_0 + e_t Z_0 + sum_{s<=t} dmat_{ts} G_s`` and
    ``Z_t = mom_t Z_0 + sum_{s<=t} zmat_{ts} G_s`` with ``G_s`` the gradient of token s.
    """
    cum = torch.cumsum(log_a, -1)  # [B, H, n, C] = log Gamma
    lg = _masked_ratio(cum)  # [B, H, n, C, C] Gamma_t / Gamma_s
    out = {"gam": torch.exp(cum)}
    if mu is None:
        out["dmat"] = -lg * eta.unsqueeze(-2)
        return out
    cum_m = torch.cumsum(torch.log(mu), -1)  # [B, H, n, C] = log M
    lm = _masked_ratio(cum_m)  # [B, H, n, C, C] M_r / M_s
    mom = torch.exp(cum_m)  # [B, H, n, C]
    out["e"] = (lg @ mom.unsqueeze(-1)).squeeze(-1)  # sum_{r<=t} Gamma_t/Gamma_r M_r
    out["dmat"] = -(lg @ lm) * eta.unsqueeze(-2)  # [B, H, n, C, C]
    out["mom"] = mom
    out["zmat"] = -lm * eta.unsqueeze(-2)
    return out


def key_gradients(
    w0: Weights, k: Tensor, v: Tensor, d: Tensor | None, cfg: DeepMemoryConfig
) -> tuple[list[Tensor], list[Tensor]]:
    """Per-token gradients at ``w0`` as outer-product factors, by hand-written backprop.

    k: [..., C, K], v: [..., C, V], w0 per layer [..., d_in, d_out]. Returns the layer inputs
    ``ins[l]: [..., C, d_in]`` and output errors ``deltas[l]: [..., C, d_out]``; the gradient of
    token s for layer l is ``ins[l][s] (outer) deltas[l][s]``.
    """
    L = len(w0)
    ins, pre = [k], []
    h = k
    for i, w in enumerate(w0):
        z = h @ w  # [..., C, d_out]
        if i < L - 1:
            pre.append(z)
            h = activation(z, cfg.activation)
            ins.append(h)
    y = z
    if cfg.norm:
        y, mean, rstd = layer_norm(z)
    if cfg.residual:
        y = y + k
    dz = bias_grad(y, v, cfg, d)  # [..., C, V]
    if cfg.norm:
        dz = layer_norm_backward(dz, z, mean, rstd)
    deltas = [dz]
    for i in reversed(range(L - 1)):
        dz = activation_backward(dz @ w0[i + 1].transpose(-1, -2), pre[i], cfg.activation)
        deltas.insert(0, dz)
    return ins, deltas


def _outer_sum(coef: Tensor, a: Tensor, u: Tensor) -> Tensor:
    """``sum_s coef_s a_s u_s^T``: coef [..., C], a [..., C, d_in], u [..., C, d_out]."""
    return (a * coef.unsqueeze(-1)).transpose(-1, -2) @ u  # [..., d_in, d_out]


def chunk_ends(T: int, C: int, n_chunks: int) -> list[int]:
    """Index of each chunk's last real token (the last chunk may be partial)."""
    return [min(C, T - n * C) - 1 for n in range(n_chunks)]


def chunk_end_table(co: dict[str, Tensor], ends: list[int]) -> dict[str, Tensor]:
    """The coefficients' row at each chunk's last real token ``ends[n]``, for all chunks at once
    (one gather per coefficient): ``[B, H, n]`` (gam, e, mom) or ``[B, H, n, C]`` (dmat, zmat)."""
    dev = co["gam"].device
    chunk = torch.arange(len(ends), device=dev)
    if ends and all(e == ends[0] for e in ends[:-1]):  # full chunks, then maybe a partial one
        last = torch.full((len(ends),), ends[0], device=dev)  # device ops: no host copy, no sync
        last[-1:].fill_(ends[-1])  # fill_, not item assignment (a copy from a host scalar tensor)
    else:
        last = torch.tensor(ends, device=dev)
    return {name: t[:, :, chunk, last] for name, t in co.items()}


def _chunk_end_rows(table: dict[str, Tensor]) -> list[dict[str, Tensor]]:
    """Per chunk, its row of :func:`chunk_end_table`: ``[B, H]`` or ``[B, H, C]`` (views).

    One unbind for all chunks, so that autograd sees one gather and one unbind instead of a
    ``select`` per chunk, whose backward would write a zero tensor of the whole coefficient
    table once per chunk."""
    per_name = {name: t.unbind(2) for name, t in table.items()}
    n_chunks = len(next(iter(per_name.values())))
    return [{name: rows[n] for name, rows in per_name.items()} for n in range(n_chunks)]


def _advance_chunk(
    state: DeepMemoryState, ins: list[Tensor], deltas: list[Tensor], row: dict[str, Tensor],
) -> DeepMemoryState:
    """State after a chunk's last real token (linear retention), from the chunk start; ``row``
    holds that token's coefficients (:func:`_chunk_end_rows`)."""
    gam = row["gam"][..., None, None]  # [B, H, 1, 1]
    new_w, new_z = [], []
    for i, w in enumerate(state.weights):  # fused multiply-adds: each is one pass over the state
        w_new = torch.addcmul(_outer_sum(row["dmat"], ins[i], deltas[i]), gam, w)
        if state.momentum is not None:
            z = state.momentum[i]
            w_new = torch.addcmul(w_new, row["e"][..., None, None], z)
            new_z.append(torch.addcmul(_outer_sum(row["zmat"], ins[i], deltas[i]),
                                       row["mom"][..., None, None], z))
        new_w.append(w_new)
    return DeepMemoryState(tuple(new_w), tuple(new_z) if state.momentum is not None else None)


def _torch_step(state: DeepMemoryState, k: Tensor, v: Tensor, d: Tensor | None,
                row: dict[str, Tensor], cfg: DeepMemoryConfig
                ) -> tuple[list[Tensor], list[Tensor], DeepMemoryState]:
    """Phase 1 for one chunk: the keys' gradient factors at the chunk start and the chunk-end state."""
    ins, deltas = key_gradients(state.weights, k, v, d, cfg)
    return ins, deltas, _advance_chunk(state, ins, deltas, row)


def loop_phase1(state: DeepMemoryState, kc: Tensor, vc: Tensor, dc: Tensor | None,
                table: dict[str, Tensor], cfg: DeepMemoryConfig) -> Phase1Out:
    """Phase 1 in PyTorch: a Python loop over chunks of :func:`_torch_step`, then the chunk-start
    states and the per-token gradient factors stacked over chunks, chunk-major ([n, B, H, ...])."""
    rows = _chunk_end_rows(table)
    # per chunk [B, H, C, D]: one copy to contiguous chunks and one unbind, not n selects/copies
    ks, vs = kc.contiguous().unbind(2), vc.contiguous().unbind(2)
    ds = dc.unbind(2) if dc is not None else [None] * len(rows)
    starts, all_ins, all_deltas = [], [], []
    for n in range(len(rows)):
        starts.append(state)
        ins, deltas, state = _torch_step(state, ks[n], vs[n], ds[n], rows[n], cfg)
        all_ins.append(ins)
        all_deltas.append(deltas)
    stack = lambda xs: [torch.stack(x, 0) for x in zip(*xs)]  # noqa: E731  per layer [n, B, H, ...]
    w0s = stack([s.weights for s in starts])
    z0s = stack([s.momentum for s in starts]) if cfg.momentum else None
    return w0s, z0s, stack(all_ins), stack(all_deltas), state


def _dual_form(
    qc: Tensor, kc: Tensor, vc: Tensor, dc: Tensor | None, co: dict[str, Tensor], T: int,
    state: DeepMemoryState, cfg: DeepMemoryConfig, readout: Readout, phase1: Phase1,
) -> tuple[Tensor, DeepMemoryState]:
    """Linear retention: phase 1 (chunk loop, keys and state), phase 2 (read-out, all chunks)."""
    table = chunk_end_table(co, chunk_ends(T, qc.shape[3], qc.shape[2]))
    w0s, z0s, all_a, all_u, state = phase1(state, kc, vc, dc, table, cfg)
    # chunk-major [n, B, H, ...]: the chunk-start states come that way from phase 1, so the
    # read-out takes them without a copy; queries and coefficients are reordered once
    major = lambda t: t.movedim(2, 0).contiguous()  # noqa: E731  [B, H, n, ...] -> [n, B, H, ...]
    qn, gam, dmat = major(qc), major(co["gam"]), major(co["dmat"])
    e = major(co["e"]) if cfg.momentum else None
    flat = lambda t: t.flatten(0, 2) if t is not None else None  # noqa: E731  [n·B·H, ...]
    x = qn  # [n, B, H, C, K]
    for i in range(cfg.depth):
        z0 = z0s[i] if cfg.momentum else None  # [n, B, H, d_in, d_out]
        out = readout(flat(x), flat(w0s[i]), flat(gam), flat(z0), flat(e), flat(all_a[i]),
                      flat(dmat), flat(all_u[i]))
        out = out.reshape(*qn.shape[:4], -1)  # [n, B, H, C, d_out]
        x = activation(out, cfg.activation) if i < cfg.depth - 1 else out
    return finish_output(out, qn, cfg).movedim(0, 2), state  # [B, H, n, C, V]


def _materialised_chunk(
    n: int, state: DeepMemoryState, qc: Tensor, kc: Tensor, vc: Tensor, dc: Tensor | None, log_a: Tensor,
    eta: Tensor, mu: Tensor | None, T: int, cfg: DeepMemoryConfig,
) -> tuple[Tensor, DeepMemoryState]:
    """Chunk ``n`` of the materialised path: per-token weights, then each query reads its own."""
    C = qc.shape[3]
    d_n = dc[:, :, n] if dc is not None else None
    w0 = read_weights(state.weights, cfg)
    ins, deltas = key_gradients(w0, kc[:, :, n], vc[:, :, n], d_n, cfg)
    per_token: list[list[Tensor]] = [[] for _ in range(cfg.depth)]
    for j in range(C):
        if n * C + j < T:  # padded tokens leave the state alone
            grads = tuple(a[:, :, j, :, None] * u[:, :, j, None, :] for a, u in zip(ins, deltas))
            m_j = mu[:, :, n, j] if mu is not None else None
            state = advance_state(state, grads, log_a[:, :, n, j], eta[:, :, n, j], m_j, cfg)
        for i, w in enumerate(read_weights(state.weights, cfg)):
            per_token[i].append(w)
    ws = tuple(torch.stack(p, 2) for p in per_token)  # [B, H, C, d_in, d_out]
    return mlp_output(ws, qc[:, :, n], cfg, per_row=True), state  # [B, H, C, V]


def _read_map_chunk(
    state: DeepMemoryState, q: Tensor, k: Tensor, v: Tensor, d: Tensor | None,
    co: dict[str, Tensor], row: dict[str, Tensor], cfg: DeepMemoryConfig,
) -> tuple[Tensor, DeepMemoryState]:
    """One chunk when only the read is nonlinear (``lq``, ``kl``: ``W_t = N(A_t)`` with a
    linear recursion of the state ``A``): every token's state from the dual coefficients at
    once, ``A_t = gam_t A_0 + e_t Z_0 + sum_{s<=t} dmat_ts a_s delta_s^T`` ([B, H, C, d_in,
    d_out]), then each query reads through ``N(A_t)``. No loop over tokens. ``q, k, v, d`` and
    ``co`` are the chunk's slices ([B, H, C, ...]), ``row`` its chunk-end coefficients."""
    ins, deltas = key_gradients(read_weights(state.weights, cfg), k, v, d, cfg)
    per_token = []
    for i, w0 in enumerate(state.weights):
        a_t = co["gam"][..., None, None] * w0.unsqueeze(2)  # [B, H, C, d_in, d_out]
        if cfg.momentum:
            a_t = a_t + co["e"][..., None, None] * state.momentum[i].unsqueeze(2)
        scaled = co["dmat"].unsqueeze(-1) * ins[i].unsqueeze(2)  # [B, H, C(t), C(s), d_in]
        per_token.append(a_t + scaled.transpose(-1, -2) @ deltas[i].unsqueeze(2))  # + sum_s
    out = mlp_output(read_weights(tuple(per_token), cfg), q, cfg, per_row=True)
    return out, _advance_chunk(state, ins, deltas, row)  # [B, H, C, V]


def _materialised(
    qc: Tensor, kc: Tensor, vc: Tensor, dc: Tensor | None, log_a: Tensor, eta: Tensor,
    mu: Tensor | None, T: int, state: DeepMemoryState, cfg: DeepMemoryConfig,
) -> tuple[Tensor, DeepMemoryState]:
    """Nonlinear retention: per-token weights of one chunk at a time (reference-speed path).

    ``lq`` and ``kl`` (a nonlinear read of a linear recursion) form a chunk's per-token states
    at once (:func:`_read_map_chunk`); ``elastic_net`` (a threshold inside the recursion) steps
    token by token (:func:`_materialised_chunk`). Under autograd each chunk is checkpointed:
    backward recomputes the chunk's per-token weights instead of keeping every token's weights
    (and the retention map's intermediates) alive, so memory holds one weight copy per chunk
    rather than per token.
    """
    outs = []
    checkpointed = torch.is_grad_enabled()
    n_chunks = qc.shape[2]
    stepwise = cfg.retention_global == "elastic_net"
    if not stepwise:  # chunk slices and chunk-end rows: one unbind each, not a select per chunk
        co = dual_coefficients(log_a, eta, mu)
        rows = _chunk_end_rows(chunk_end_table(co, chunk_ends(T, qc.shape[3], n_chunks)))
        qs, ks, vs = qc.unbind(2), kc.unbind(2), vc.unbind(2)
        ds = dc.unbind(2) if dc is not None else [None] * n_chunks
        cos = [dict(zip(co, sl)) for sl in zip(*(t.unbind(2) for t in co.values()))]
    for n in range(n_chunks):
        if stepwise:
            fn, args = _materialised_chunk, (n, state, qc, kc, vc, dc, log_a, eta, mu, T, cfg)
        else:
            fn, args = _read_map_chunk, (state, qs[n], ks[n], vs[n], ds[n], cos[n], rows[n], cfg)
        if checkpointed:
            o, state = torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
        else:
            o, state = fn(*args)
        outs.append(o)
    return torch.stack(outs, 2), state


def chunk_deep_memory_with(
    q: Tensor, k: Tensor, v: Tensor, eta: Tensor, init_weights: Weights, cfg: DeepMemoryConfig,
    g: Tensor | None, mu: Tensor | None, lam: Tensor | None, delta: Tensor | None,
    initial_state: DeepMemoryState | None, output_final_state: bool, readout: Readout,
    phase1: Phase1 | None = None, dual: DualForm | None = None,
) -> tuple[Tensor, DeepMemoryState | None]:
    """:func:`chunk_deep_memory` with a pluggable dual-form read-out and chunk loop (the
    Triton backend's; ``phase1=None`` is the PyTorch loop, :func:`loop_phase1`), or the whole
    dual form (``dual``, for linear retention; it replaces both)."""
    check_inputs(q, k, v, eta, init_weights, cfg, g, mu, lam, delta)
    B, T, H, _ = q.shape
    C = cfg.chunk_size
    dt = accum_dtype(q)
    qc, kc, vc = (_to_chunks(x.to(dt), C) for x in (q, k, v))  # [B, H, n, C, D]
    log_a = _to_chunks(log_decay(g, lam, cfg, q), C)  # [B, H, n, C]
    eta_c = _to_chunks(eta.to(dt), C)  # [B, H, n, C], 0 on padding
    # momentum 1 on padding keeps log(mu) finite; padded tokens never reach a real token
    mu_c = _to_chunks(mu.to(dt) - 1.0, C) + 1.0 if mu is not None else None
    dl = per_token_delta(cfg, delta, q)
    dc = _to_chunks(dl - 1.0, C) + 1.0 if dl is not None else None  # huber delta 1 on padding
    state = start_state(init_weights, cfg, B, initial_state, dt)
    if cfg.linear_retention:
        co = dual_coefficients(log_a, eta_c, mu_c)
        if dual is not None:
            o, state = dual(qc, kc, vc, dc, co, T, state, cfg)
        else:
            o, state = _dual_form(qc, kc, vc, dc, co, T, state, cfg, readout, phase1 or loop_phase1)
    else:
        o, state = _materialised(qc, kc, vc, dc, log_a, eta_c, mu_c, T, state, cfg)
    o = o.movedim(1, 3).flatten(1, 2)[:, :T]  # [B, T, H, V]
    return o.to(v.dtype), (state if output_final_state else None)


def chunk_deep_memory(
    q: Tensor, k: Tensor, v: Tensor, eta: Tensor, init_weights: Weights, cfg: DeepMemoryConfig,
    g: Tensor | None = None, mu: Tensor | None = None, lam: Tensor | None = None,
    delta: Tensor | None = None, initial_state: DeepMemoryState | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, DeepMemoryState | None]:
    """Chunk-wise deep memory in PyTorch; same API and result as ``recurrent_deep_memory``."""
    return chunk_deep_memory_with(
        q, k, v, eta, init_weights, cfg, g, mu, lam, delta, initial_state, output_final_state,
        readout_torch,
    )
