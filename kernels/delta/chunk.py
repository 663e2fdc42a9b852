"""Triton chunked gated delta rule, forward and backward (``torch.autograd.Function``).

Forward: in-chunk gate cumsum -> intra-chunk products (M, P) -> UT transform by blocked
inversion (X = (I + diag(β) P)^{-1}, W, U) -> sequential state pass over chunks (S_0 per chunk,
pseudo-values Ṽ) -> outputs. Backward recomputes W from the saved X (S_0 and Ṽ are kept by
the forward), walks the chunks backwards for dS, then forms all input gradients
chunk-parallel. Accumulation and the carried state are float32 whatever the input dtype; the
chunk-start states S_0, the pseudo-values Ṽ and their gradients are stored in the input's dtype
(half the traffic of the state passes for bf16; W and U, which drive the state recursion, stay
float32). See README.md for the formulas.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.autograd.function import once_differentiable
import triton

from . import _tl_bwd as bwd
from . import _tl_fwd as fwd
from ._common import Result, Tensor, check_inputs, gate_mode
from ._tl_common import chunk_cumsum_kernel

BT = 64  # chunk length
BC = 16  # sub-chunk length for per-channel gates


@dataclass(frozen=True)
class Plan:
    """Packed layout of a batch: sequence bounds, chunk table and block sizes."""

    cu: Tensor  # [N+1] int32 token offsets
    chunk_off: Tensor  # [N+1] int32 first global chunk of each sequence
    chunk_seq: Tensor  # [NC] int32 sequence of each global chunk
    n_seq: int
    n_chunks: int
    heads: int
    dk: int
    dv: int
    bk: int
    bv: int  # value block of the chunk-parallel kernels
    bv_loop: int  # value block of the main backward kernel's loop (the state passes tune theirs)
    gate: int
    prec: str
    store: torch.dtype  # of S_0, Ṽ and their gradients: the input's dtype (S_0, Ṽ, dṼ float32 with a scalar gate)


def chunk_table(b: int, t: int, cu_seqlens: Tensor | None, dev: torch.device
                ) -> tuple[Tensor, Tensor, Tensor, int, int]:
    """``(cu, chunk_off, chunk_seq, n_seq, n_chunks)`` (int32 tensors on ``dev``). A batch of
    b sequences of length t is laid out by device ops alone: a tensor made from host lists is a
    copy that synchronises the CUDA stream, which would stall every call on the work queued
    before it. With ``cu_seqlens`` the lengths are read on the host (one sync, as fla's)."""
    if cu_seqlens is None:
        nt = -(-t // BT)
        cu = torch.arange(b + 1, device=dev, dtype=torch.int32) * t  # [B + 1]
        chunk_off = torch.arange(b + 1, device=dev, dtype=torch.int32) * nt
        chunk_seq = torch.arange(b * nt, device=dev, dtype=torch.int32) // nt  # [NC]
        return cu, chunk_off, chunk_seq, b, b * nt
    bounds = cu_seqlens.tolist()
    lens = [e - s for s, e in zip(bounds[:-1], bounds[1:])]
    counts = [-(-n // BT) for n in lens]
    cu = torch.tensor([0] + lens, device=dev, dtype=torch.int64).cumsum(0).to(torch.int32)
    chunk_off = torch.tensor([0] + counts, device=dev, dtype=torch.int64).cumsum(0).to(torch.int32)
    seq_of = [i for i, c in enumerate(counts) for _ in range(c)]
    chunk_seq = torch.tensor(seq_of, device=dev, dtype=torch.int32)
    return cu, chunk_off, chunk_seq, len(lens), sum(counts)


def make_plan(q: Tensor, v: Tensor, g: Tensor | None, cu_seqlens: Tensor | None) -> Plan:
    """Build the chunk table (:func:`chunk_table`) and pick block sizes."""
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    if dk > 256:
        raise ValueError(f"chunk_delta_rule supports K <= 256; got K={dk}")
    cu, chunk_off, chunk_seq, n_seq, n_chunks = chunk_table(b, t, cu_seqlens, q.device)
    bk = max(16, triton.next_power_of_2(dk))
    bv = min(64, max(16, triton.next_power_of_2(dv)))
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    return Plan(
        cu, chunk_off, chunk_seq, n_seq, n_chunks, h, dk, dv, bk, bv, min(bv, 32),
        gate_mode(g), prec, q.dtype,
    )


def qk_key_block(plan: Plan) -> int:
    """Channels per pass of ``qk_bwd_kernel``: 64 with per-channel gates (sm_90 builds then spill
    nothing, 224-272 B per thread with the whole key), the whole key otherwise (its dense intra
    terms, recomputed per pass, spilled more in passes of 64)."""
    return min(64, plan.bk) if plan.gate == 2 else plan.bk


def value_grid(plan: Plan, *rest: int) -> Callable[[dict], tuple[int, ...]]:
    """Grid (value blocks, *rest) of a kernel whose value block BV is an autotuned tile."""
    return lambda meta: (triton.cdiv(plan.dv, meta["BV"]), *rest)


def gate_cumsum(g: Tensor, plan: Plan, reverse: bool = False) -> Tensor:
    """In-chunk (reverse) cumulative sum of a packed gate [TT, H(, K)] in float32."""
    out = torch.empty(g.shape, device=g.device, dtype=torch.float32)
    if plan.n_chunks:
        chunk_cumsum_kernel[(plan.n_chunks, plan.heads)](
            g, out, plan.chunk_seq, plan.cu, plan.chunk_off, plan.heads, plan.dk,
            GATE=plan.gate, REVERSE=reverse, BT=BT, BK=plan.bk,
        )
    return out


def intra(q: Tensor, k: Tensor, gc: Tensor, plan: Plan) -> tuple[Tensor, Tensor]:
    """M = lower(Q Kᵀ ⊙ D) and P = strictly_lower(K Kᵀ ⊙ D): [TT, H, BT] each."""
    m = q.new_empty(q.shape[0], plan.heads, BT, dtype=torch.float32)  # every valid row is written
    p = torch.empty_like(m)
    args = (q, k, gc, m, p, plan.chunk_seq, plan.cu, plan.chunk_off, plan.heads, plan.dk)
    if plan.gate == 2:
        grid = (BT // BC, plan.n_chunks, plan.heads)
        fwd.intra_channel_kernel[grid](*args, BT=BT, BC=BC, BK=plan.bk, PREC=plan.prec)
        fwd.intra_channel_exact_kernel[grid](*args, BT=BT, BC=BC, BK=plan.bk)  # strong decay only
    else:
        fwd.intra_dense_kernel[(plan.n_chunks, plan.heads)](
            *args, GATE=plan.gate, BT=BT, BK=plan.bk, PREC=plan.prec,
        )
    return m, p


def solve_wu(
    k: Tensor, v: Tensor, beta: Tensor, gc: Tensor, p: Tensor | None, x: Tensor | None, plan: Plan
) -> tuple[Tensor, Tensor, Tensor | None]:
    """X = (I + diag(β) P)^{-1}, W and U (float32) when ``p`` is given; else W alone from the
    saved ``x`` (the backward's need: U only feeds the forward's state pass)."""
    tt = k.shape[0]
    solve = p is not None
    x = torch.empty(tt, plan.heads, BT, device=k.device, dtype=torch.float32) if solve else x
    w = torch.empty(tt, plan.heads, plan.dk, device=k.device, dtype=torch.float32)
    u = torch.empty(tt, plan.heads, plan.dv, device=k.device, dtype=torch.float32) if solve else None
    fwd.solve_kernel[(plan.n_chunks, plan.heads)](
        k, v, beta, gc, p if solve else x, x, w, u if solve else w, plan.chunk_seq, plan.cu,
        plan.chunk_off, plan.heads, plan.dk, plan.dv, SOLVE=solve, GATE=plan.gate, BT=BT, BC=BC,
        BK=plan.bk, BV=plan.bv, PREC=plan.prec,
    )
    return x, w, u


def state_forward(
    k: Tensor, gc: Tensor, w: Tensor, u: Tensor, h0: Tensor | None, want_ht: bool, plan: Plan
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Chunk-start states [NC, H, K, V], pseudo-values Ṽ [TT, H, V] and the final state.

    With a scalar gate S_0 and Ṽ (so also dṼ; not dS) are kept in float32: in the input's half
    dtype, bf16 runs put the gate's gradient over the issue's 5e-3 (gates near 1: up to 6.0e-3
    at T = 70, K = V = 32; near 0: 5.3e-3 at T = 37, K = 20, V = 12; now ≤ 3.9e-3; either alone
    in float32 is not enough), for ~20% more bytes at shape S (RESULTS.md, 2026-11-25)."""
    keep = torch.float32 if plan.gate == 1 else plan.store
    hs = k.new_empty(plan.n_chunks, plan.heads, plan.dk, plan.dv, dtype=keep)
    vn = torch.empty_like(u, dtype=keep)
    ht = k.new_empty(plan.n_seq, plan.heads, plan.dk, plan.dv, dtype=torch.float32) if want_ht else None
    fwd.state_fwd_kernel[value_grid(plan, plan.n_seq * plan.heads)](
        k, gc, w, u, vn, hs, h0 if h0 is not None else hs, ht if want_ht else hs, plan.cu,
        plan.chunk_off, plan.heads, plan.dk, plan.dv, HAS_H0=h0 is not None, STORE_HT=want_ht,
        GATE=plan.gate, BT=BT, BK=plan.bk, PREC=plan.prec,
    )
    return hs, vn, ht


def forward_packed(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, gc: Tensor, scale: float,
    h0: Tensor | None, want_ht: bool, plan: Plan,
) -> tuple[Tensor, Tensor | None, tuple[Tensor, ...]]:
    """Packed forward: returns o [TT, H, V], the final state, and what the backward keeps:
    X, M, P, the chunk-start states S_0 and the pseudo-values Ṽ (the last two in the input's
    dtype, so that the backward need not walk the chunks forward again)."""
    m, p = intra(q, k, gc, plan)
    x, w, u = solve_wu(k, v, beta, gc, p, None, plan)
    hs, vn, ht = state_forward(k, gc, w, u, h0, want_ht, plan)
    o = torch.empty_like(v)
    fwd.output_kernel[value_grid(plan, plan.n_chunks, plan.heads)](
        q, gc, m, vn, hs, o, plan.chunk_seq, plan.cu, plan.chunk_off, scale, plan.heads,
        plan.dk, plan.dv, GATE=plan.gate, BT=BT, BK=plan.bk, PREC=plan.prec,
    )
    return o, ht, (x, m, p, hs, vn)


def backward_packed(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, gc: Tensor, kept: tuple[Tensor, ...],
    do: Tensor, dht: Tensor | None, scale: float, plan: Plan,
) -> tuple[Tensor, ...]:
    """Packed backward from the forward's ``kept`` (X, M, P, S_0, Ṽ): dq, dk, dv, dβ, dG (per
    token, before the reverse cumsum) and dS_init. Only W is recomputed (chunk-parallel)."""
    x, m, p, hs, vn = kept
    _, w, _ = solve_wu(k, v, beta, gc, None, x, plan)
    f32 = dict(device=q.device, dtype=torch.float32)
    dhs = torch.empty_like(hs, dtype=plan.store)  # dS in the input's dtype even with a scalar gate
    dvn = torch.empty_like(vn)
    dh0 = torch.empty(plan.n_seq, plan.heads, plan.dk, plan.dv, **f32)
    bwd.state_bwd_kernel[value_grid(plan, plan.n_seq * plan.heads)](
        q, k, gc, w, m, do, dvn, dhs, dht if dht is not None else dh0, dh0, plan.cu,
        plan.chunk_off, scale, plan.heads, plan.dk, plan.dv, HAS_DHT=dht is not None,
        GATE=plan.gate, BT=BT, BK=plan.bk, PREC=plan.prec,
    )
    dq_out, dk_out = torch.empty_like(q), torch.empty_like(k)  # final, in the inputs' dtype
    channel = plan.gate == 2  # its intra-chunk terms come from a kernel of their own
    dq = torch.empty(q.shape, **f32) if channel else dq_out
    dk = torch.empty(k.shape, **f32)  # dK's partials, float32
    dv, db = torch.empty_like(v), torch.empty(beta.shape, **f32)
    dg = torch.empty(gc.shape, **f32) if plan.gate else dq
    dm, da = torch.empty_like(m), torch.empty_like(m)
    common = (plan.chunk_seq, plan.cu, plan.chunk_off)
    grid = (plan.n_chunks, plan.heads)
    meta = dict(GATE=plan.gate, BT=BT, BK=plan.bk, BV=plan.bv_loop, PREC=plan.prec)
    bwd.wy_bwd_kernel[grid](
        k, v, beta, gc, x, dvn, hs, dk, dv, db, da, *common, plan.heads, plan.dk, plan.dv, **meta,
    )
    bwd.qk_bwd_kernel[grid](
        q, k, beta, gc, vn, hs, dhs, do, p, da, dk, dq, dq_out, dk_out, db, dg, dm, *common, scale,
        plan.heads, plan.dk, plan.dv, SK=qk_key_block(plan), **meta,
    )
    if channel:
        bwd.intra_bwd_channel_kernel[(BT // BC, plan.n_chunks, plan.heads)](
            q, k, beta, gc, p, dm, da, dq, dk, dq_out, dk_out, db, dg, *common, plan.heads, plan.dk,
            BT=BT, BC=BC, BK=plan.bk, PREC=plan.prec,
        )
    return dq_out, dk_out, dv, db, dg, dh0


def _pack(x: Tensor) -> Tensor:
    """[B, T, H, ...] -> contiguous [B*T, H, ...]."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:]).contiguous()


class ChunkDeltaRule(torch.autograd.Function):
    """Autograd wrapper around the packed Triton forward and backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, q, k, v, beta, g, scale, initial_state, output_final_state, cu_seqlens
    ):
        b, t = q.shape[:2]
        plan = make_plan(q, v, g, cu_seqlens)
        qp, kp, vp, bp = (_pack(x) for x in (q, k, v, beta))
        gc = gate_cumsum(_pack(g), plan) if g is not None else qp.new_zeros(1, dtype=torch.float32)
        h0 = initial_state.float().contiguous() if initial_state is not None else None
        o, ht, kept = forward_packed(qp, kp, vp, bp, gc, scale, h0, output_final_state, plan)
        ctx.save_for_backward(qp, kp, vp, bp, gc, *kept)
        ctx.meta = (plan, scale, b, t, g.dtype if g is not None else None, initial_state is not None)
        ctx.dtypes = (q.dtype, k.dtype, beta.dtype, None if initial_state is None else initial_state.dtype)
        return o.reshape(v.shape), ht

    @staticmethod
    @once_differentiable  # the kernels' backward is not itself differentiable
    def backward(ctx, do, dht):  # type: ignore[override]
        qp, kp, vp, bp, gc, *kept = ctx.saved_tensors
        plan, scale, b, t, g_dtype, has_h0 = ctx.meta
        q_dtype, k_dtype, beta_dtype, h0_dtype = ctx.dtypes
        dht = dht.float().contiguous() if dht is not None else None
        dq, dk, dv, db, dgt, dh0 = backward_packed(qp, kp, vp, bp, gc, kept, _pack(do), dht, scale, plan)
        unpack = lambda y, dtype: y.reshape(b, t, *y.shape[1:]).to(dtype)  # noqa: E731
        dg = unpack(gate_cumsum(dgt, plan, reverse=True), g_dtype) if g_dtype is not None else None
        dh0 = dh0.to(h0_dtype) if has_h0 else None
        return (unpack(dq, q_dtype), unpack(dk, k_dtype), unpack(dv, vp.dtype), unpack(db, beta_dtype),
                dg, None, dh0, None, None)


def chunk_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Tensor | None = None,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
) -> Result:
    """Gated delta rule with Triton kernels; same contract as ``recurrent_delta_rule``.

    Differentiable in q, k, v, beta, g and initial_state. Chunk length 64, K <= 256.
    """
    check_inputs(q, k, v, beta, g, initial_state, cu_seqlens)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    o, ht = ChunkDeltaRule.apply(q, k, v, beta, g, scale, initial_state, output_final_state, cu_seqlens)
    return o, ht
