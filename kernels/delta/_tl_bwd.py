"""Backward Triton kernels of the chunked gated delta rule (formulas in README.md).

state pass (reverse) -> dS at each chunk end, dṼ, dS_init;  wy -> dV, the WY parts of dK,
dβ and dA;  qk -> the inter-chunk parts of dQ, dK, dG and dM, and for no or scalar gates the
intra-chunk parts too (final dQ, dK, dβ, per-token dG);  intra (per channel) -> the intra-chunk
parts for per-channel gates. An in-chunk reverse cumsum of the per-token dG then gives dg.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..tuning import autotune

from ._tl_fwd import STATE_PASS_SHAPES
from ._tl_common import (
    DENSE_SPAN, chunk_bounds, dot, gate_col, gate_row, gate_tile, load_row, load_state, load_tile,
    load_tile_raw, load_vec, masked_exp, pass_chunk, pass_program, raw_dot, state_tile, store_tile,
    store_vec, sub_chunk_tiles, sub_span,
)
from ..jit_keys import settle


@autotune(["H", "K", "V", "GATE", "BK"], STATE_PASS_SHAPES)
@triton.jit
def state_bwd_kernel(
    q, k, G, W, M, dO, dVN, DHS, dht, dh0, cu, chunk_off, scale, H, K, V,
    HAS_DHT: tl.constexpr, GATE: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
):
    """Walk the chunks backwards: store dS_C (the gradient of each chunk's end state), form
    dṼ = scale·Mᵀ dO + (K ⊙ e^{G_last − G}) dS_C and pass dS_0 = e^{G_last} dS_C
    + scale (Q ⊙ e^G)ᵀ dO − Wᵀ dṼ to the previous chunk."""
    n, h, bos, eos, c_base, v0 = pass_program(cu, chunk_off, H, BV)
    ds = load_state(dht, n, h, H, K, V, BK, BV, v0, HAS_DHT)  # [BK, BV]
    n_chunks = tl.cdiv(eos - bos, BT)
    for cr in range(0, n_chunks):
        c = n_chunks - 1 - cr
        t0, nt, rows, valid = pass_chunk(bos, eos, c, BT)
        p_c, m_c = state_tile(DHS, c_base + c, h, H, K, V, BK, BV, v0)  # its own name: a bf16 pointer
        tl.store(p_c, ds.to(DHS.dtype.element_ty), mask=m_c)
        last = t0 + nt - 1
        gt = gate_tile(G, t0, rows, valid, h, H, K, GATE, BT, BK)
        to_end = masked_exp(gate_row(G, last, h, H, K, GATE, BK) - gt, valid[:, None])  # e^{G_last - G}
        kd = load_tile(k, t0, rows, valid, h, H, K, BK, 0) * to_end
        qg = load_tile(q, t0, rows, valid, h, H, K, BK, 0) * tl.exp(gt)  # [BT, BK]
        do = load_tile(dO, t0, rows, valid, h, H, V, BV, v0)  # [BT, BV]
        m = load_tile(M, t0, rows, valid, h, H, BT, BT, 0)  # [BT, BT]
        dvn = scale * dot(tl.trans(m), do, PREC) + dot(kd, ds, PREC)  # [BT, BV]
        store_tile(dVN, dvn, t0, rows, valid, h, H, V, BV, v0)
        wt = load_tile(W, t0, rows, valid, h, H, K, BK, 0)
        ds = ds * tl.exp(gate_col(G, last, h, H, K, GATE, BK))
        ds += scale * dot(tl.trans(qg), do, PREC) - dot(tl.trans(wt), dvn, PREC)
    p, msk = state_tile(dh0, n, h, H, K, V, BK, BV, v0)
    tl.store(p, ds, mask=msk)


# The per-chunk backward is two kernels: as one (until f59a5ca, ``main_bwd_kernel``) its sm_90
# builds spilled 1.0-1.2 KB of registers per thread at best (five [BT, BK] and [BT, BT]
# accumulators through one loop); split, 0-0.7 KB (compile_check), for +0.95 GB of traffic at
# shape S (the float32 dK partial, S_0 and K read twice; benchmarks/traffic.py).
@autotune(["H", "K", "V", "GATE", "BK", "BV"], ((8, 1), (4, 1), (8, 2), (16, 1)))
@triton.jit
def wy_bwd_kernel(
    k, v, beta, G, X, dVN, HS, dk_p, dv, dbeta, dA, chunk_seq, cu, chunk_off, H, K, V,
    GATE: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
):
    """Per chunk, back through the WY form (U = X diag(β) V, W = X diag(β) (K ⊙ e^G),
    Ṽ = U − W S_0): dV, dβ except its share from P, dA = strictly_lower(−Xᵀ dX Xᵀ), and the
    float32 partial dK ⊇ β ⊙ (Xᵀ dW) ⊙ e^G (``dk_p``; qk_bwd_kernel forms its dG share)."""
    i_c, h = tl.program_id(0), tl.program_id(1)
    t0, nt = chunk_bounds(i_c, chunk_seq, cu, chunk_off, BT)
    rows = tl.arange(0, BT)  # local: token t0 + row
    valid = rows < nt
    x = load_tile(X, t0, rows, valid, h, H, BT, BT, 0)  # [BT, BT]
    bt = load_vec(beta, t0, rows, valid, h, H)  # [BT]
    dw = tl.zeros([BT, BK], dtype=tl.float32)  # −dṼ S_0ᵀ
    dx = tl.zeros([BT, BT], dtype=tl.float32)
    db = tl.zeros([BT], dtype=tl.float32)
    for v0 in range(0, V, BV):
        p, msk = state_tile(HS, i_c, h, H, K, V, BK, BV, v0)
        s = tl.load(p, mask=msk, other=0.0).to(tl.float32)  # [BK, BV]
        dvn = load_tile(dVN, t0, rows, valid, h, H, V, BV, v0)  # [BT, BV] = dU
        vt = load_tile(v, t0, rows, valid, h, H, V, BV, v0)
        dw -= dot(dvn, tl.trans(s), PREC)
        y = dot(tl.trans(x), dvn, PREC)  # [BT, BV] = Xᵀ dU
        store_tile(dv, y * bt[:, None], t0, rows, valid, h, H, V, BV, v0)
        db += tl.sum(y * vt, 1)
        dx += dot(dvn, tl.trans(vt * bt[:, None]), PREC)
    kt = load_tile(k, t0, rows, valid, h, H, K, BK, 0)
    eg = tl.exp(gate_tile(G, t0, rows, valid, h, H, K, GATE, BT, BK))
    kg = kt * eg  # [BT, BK]
    y2 = dot(tl.trans(x), dw, PREC)  # Xᵀ dW
    db += tl.sum(y2 * kg, 1)
    dx += dot(dw, tl.trans(kg * bt[:, None]), PREC)
    da = -dot(dot(tl.trans(x), dx, PREC), tl.trans(x), PREC)
    da = tl.where((rows[:, None] > rows[None, :]) & valid[:, None] & valid[None, :], da, 0.0)
    store_tile(dA, da, t0, rows, valid, h, H, BT, BT, 0)
    store_vec(dbeta, db, t0, rows, valid, h, H)
    store_tile(dk_p, y2 * bt[:, None] * eg, t0, rows, valid, h, H, K, BK, 0)


@autotune(["H", "K", "V", "GATE", "BK", "BV", "SK"], ((8, 1), (4, 1), (8, 2), (16, 1)),
          restore=["dk_p", "dbeta"])
@triton.jit
def qk_bwd_kernel(
    q, k, beta, G, VN, HS, DHS, dO, P, dA, dk_p,
    dq, dq_out, dk_out, dbeta, dG, dM, chunk_seq, cu, chunk_off, scale, H, K, V,
    GATE: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, SK: tl.constexpr,
    PREC: tl.constexpr,
):
    """Per chunk, after ``wy_bwd_kernel``: the state and output terms dQ ⊇ scale (dO S_0ᵀ) ⊙ e^G,
    dK ⊇ (Ṽ dS_Cᵀ) ⊙ e^{G_last−G}, dM = scale·lower(dO Ṽᵀ) and their dG shares; for no or
    scalar gates also the intra-chunk terms (``dense_intra_terms``, from dM and wy's dA): then
    dQ, dK are final (inputs' dtype), as are dβ and the per-token dG. Per-channel gates leave
    float32 partials dq, dk (in ``dk_p``), dβ, dG to ``intra_bwd_channel_kernel``.

    dM first (one pass over the value blocks), then the key dimension SK channels at a time,
    each with its own pass over the value blocks (``Ṽ``, ``dO`` read again, from the cache), so
    that the accumulators are [BT, SK] instead of [BT, K]."""
    i_c, h = tl.program_id(0), tl.program_id(1)
    t0, nt = chunk_bounds(i_c, chunk_seq, cu, chunk_off, BT)
    rows = tl.arange(0, BT)  # local: token t0 + row
    valid = rows < nt
    last = (rows == nt - 1)[:, None]
    dm = tl.zeros([BT, BT], dtype=tl.float32)
    for v0 in range(0, V, BV):  # Ṽ, dO as stored: exact raw_dots
        vn = load_tile_raw(VN, t0, rows, valid, h, H, V, BV, v0)  # [BT, BV]
        do = load_tile_raw(dO, t0, rows, valid, h, H, V, BV, v0)
        dm += raw_dot(do, tl.trans(vn), PREC)
    dm = tl.where((rows[:, None] >= rows[None, :]) & valid[:, None] & valid[None, :], dm * scale, 0.0)
    store_tile(dM, dm, t0, rows, valid, h, H, BT, BT, 0)
    if GATE < 2:
        tl.debug_barrier()  # dM goes through memory: its transpose feeds a dot (README)
        da = load_tile(dA, t0, rows, valid, h, H, BT, BT, 0)  # wy_bwd_kernel's, strictly lower
        db_a = tl.sum(da * load_tile(P, t0, rows, valid, h, H, BT, BT, 0), 1)  # dβ ⊇ rowsum(dA ⊙ P)
        store_vec(dbeta, load_vec(dbeta, t0, rows, valid, h, H) + db_a, t0, rows, valid, h, H)
    dgv = tl.zeros([BT], dtype=tl.float32)  # a scalar gate's dG, summed over the channels
    for k0 in range(0, BK, SK):
        dq_s = tl.zeros([BT, SK], dtype=tl.float32)  # dO S_0ᵀ
        dkd = tl.zeros([BT, SK], dtype=tl.float32)  # Ṽ dS_Cᵀ
        sds = tl.zeros([SK], dtype=tl.float32)  # Σ_v S_0 ⊙ dS_C
        for v0 in range(0, V, BV):
            p, msk = state_tile(HS, i_c, h, H, K, V, SK, BV, v0, k0)
            s = tl.load(p, mask=msk, other=0.0)  # [SK, BV], as stored: exact raw_dots
            p, msk = state_tile(DHS, i_c, h, H, K, V, SK, BV, v0, k0)
            ds = tl.load(p, mask=msk, other=0.0)
            dq_s += raw_dot(load_tile_raw(dO, t0, rows, valid, h, H, V, BV, v0), tl.trans(s), PREC)
            dkd += raw_dot(load_tile_raw(VN, t0, rows, valid, h, H, V, BV, v0), tl.trans(ds), PREC)
            sds += tl.sum(s.to(tl.float32) * ds.to(tl.float32), 1)
        qt = load_tile(q, t0, rows, valid, h, H, K, SK, k0)  # [BT, SK]
        kt = load_tile(k, t0, rows, valid, h, H, K, SK, k0)
        gt = gate_tile(G, t0, rows, valid, h, H, K, GATE, BT, SK, k0)
        gl = gate_row(G, t0 + nt - 1, h, H, K, GATE, SK, k0)  # [1, SK] or [1, 1]
        dq_s = dq_s * scale * tl.exp(gt)
        dk_d = dkd * masked_exp(gl - gt, valid[:, None])
        dk_g = load_tile(dk_p, t0, rows, valid, h, H, K, SK, k0)  # β ⊙ (Xᵀ dW) ⊙ e^G from wy
        dk_t = dk_g + dk_d
        dk_gate = dk_g - dk_d  # signs of the e^{±G} factors (README, dG)
        if GATE < 2:  # the intra-chunk terms here: final dq, dk in the inputs' dtype
            dq_m, dk_r, dk_c = dense_intra_terms(qt, kt, beta, G, dM, dA, t0, rows, valid, h, H,
                                                 GATE, BT, PREC)
            dq_s += dq_m
            store_tile(dq_out, dq_s, t0, rows, valid, h, H, K, SK, k0)
            store_tile(dk_out, dk_t + dk_r + dk_c, t0, rows, valid, h, H, K, SK, k0)
            dk_gate += dk_r - dk_c
        else:
            store_tile(dq, dq_s, t0, rows, valid, h, H, K, SK, k0)
            store_tile(dk_p, dk_t, t0, rows, valid, h, H, K, SK, k0)
        if GATE > 0:
            dg = qt * dq_s + kt * dk_gate  # [BT, SK]
            tail = tl.sum(kt * dk_d, 0)[None, :] + tl.exp(gl) * sds[None, :]  # [1, SK]
            dg += tl.where(last, tail, 0.0)
            if GATE == 2:
                store_tile(dG, dg, t0, rows, valid, h, H, K, SK, k0)
            else:
                dgv += tl.sum(dg, 1)
    if GATE == 1:
        store_vec(dG, dgv, t0, rows, valid, h, H)


@triton.jit
def finish_rows(
    dq, dk, dq_out, dk_out, dbeta, dG, t0, rows, valid, h, H, K, qt, kt,
    dq_m, dk_r, dk_c, db_a, GATE: tl.constexpr, BK: tl.constexpr,
):
    """Add the intra-chunk terms to the partials of qk_bwd_kernel: dq, dk are stored into
    ``dq_out``, ``dk_out`` (in the inputs' dtype: no separate cast pass), dβ and dG in place.

    dq_m: from M (query side), dk_r / dk_c: key as row / column of M and P, db_a: from P."""
    dq_t = load_tile(dq, t0, rows, valid, h, H, K, BK, 0) + dq_m
    store_tile(dq_out, dq_t, t0, rows, valid, h, H, K, BK, 0)
    dk_t = load_tile(dk, t0, rows, valid, h, H, K, BK, 0) + dk_r + dk_c
    store_tile(dk_out, dk_t, t0, rows, valid, h, H, K, BK, 0)
    store_vec(dbeta, load_vec(dbeta, t0, rows, valid, h, H) + db_a, t0, rows, valid, h, H)
    if GATE == 2:
        dg = load_tile(dG, t0, rows, valid, h, H, K, BK, 0) + qt * dq_m + kt * (dk_r - dk_c)
        store_tile(dG, dg, t0, rows, valid, h, H, K, BK, 0)
    elif GATE == 1:
        dg = load_vec(dG, t0, rows, valid, h, H) + tl.sum(qt * dq_m + kt * (dk_r - dk_c), 1)
        store_vec(dG, dg, t0, rows, valid, h, H)


@triton.jit
def dense_intra_terms(qt, kt, beta, G, dM, dA, t0, rows, valid, h, H,
                      GATE: tl.constexpr, BT: tl.constexpr, PREC: tl.constexpr):
    """No gate or scalar gate: back through M = lower(Q Kᵀ ⊙ D) and A = diag(β) P,
    P = strictly_lower(K Kᵀ ⊙ D), from dM and dA in memory (loaded as tiles and transposed
    tiles, so that no dot result feeds a dot transposed), for the channels of ``qt, kt``
    [BT, SK]. Returns dq_m (from M), dk_r / dk_c (key as row / column of M and P)."""
    keep = (rows[:, None] >= rows[None, :]) & valid[:, None] & valid[None, :]  # [BT, BT]
    keep_t = (rows[:, None] <= rows[None, :]) & valid[:, None] & valid[None, :]  # transposed
    bt = load_vec(beta, t0, rows, valid, h, H)  # [BT]
    if GATE == 1:
        gv = load_vec(G, t0, rows, valid, h, H)
        decay = masked_exp(gv[:, None] - gv[None, :], keep)  # [BT, BT]
        decay_t = masked_exp(gv[None, :] - gv[:, None], keep_t)
    else:
        decay = tl.where(keep, 1.0, 0.0)
        decay_t = tl.where(keep_t, 1.0, 0.0)
    dmd = load_tile(dM, t0, rows, valid, h, H, BT, BT, 0) * decay
    dpd = load_tile(dA, t0, rows, valid, h, H, BT, BT, 0) * bt[:, None] * decay
    offs_t = rows[None, :] * (H * BT) + rows[:, None]  # [j, i] -> element (i, j)
    dmd_t = tl.load(dM + (t0 * H + h) * BT + offs_t, mask=valid[None, :] & valid[:, None], other=0.0) * decay_t
    dpd_t = tl.load(dA + (t0 * H + h) * BT + offs_t, mask=valid[None, :] & valid[:, None], other=0.0) * bt[None, :] * decay_t
    dq_m = dot(dmd, kt, PREC)
    dk_r = dot(dpd, kt, PREC)
    dk_c = dot(dmd_t, qt, PREC) + dot(dpd_t, kt, PREC)
    return dq_m, dk_r, dk_c


# DIAG (tuned): the diagonal sub-block's key-as-column terms as a reduction over the block's rows
# inside the column loop (0: one loop, a cross-row sum per column), or a second loop over its rows
# with elementwise updates only (1: no reductions, twice the exponentials; as fla writes it).
@autotune(["H", "K", "BK"], ((4, 3, {"DIAG": 0}), (8, 3, {"DIAG": 0}), (2, 3, {"DIAG": 0}),
                             (4, 1, {"DIAG": 0}), (4, 3, {"DIAG": 1}), (8, 3, {"DIAG": 1})),
          restore=["dbeta", "dG"])
@triton.jit
def intra_bwd_channel_kernel(
    q, k, beta, G, P, dM, dA, dq, dk, dq_out, dk_out, dbeta, dG, chunk_seq, cu, chunk_off, H, K,
    BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, DIAG: tl.constexpr, PREC: tl.constexpr,
):
    """Per-channel gate, one sub-chunk a of BC rows per program: its rows of dQ, dK (as row of
    M and P against sub-chunks b ≤ a, as column against sub-chunks c ≥ a) and dβ (from P kept
    by the forward). Columns of dM and dA are loaded, not extracted from tiles."""
    i_s, i_c, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t0, nt = chunk_bounds(i_c, chunk_seq, cu, chunk_off, BT)
    ci, rows, valid, qa, ka, ga = sub_chunk_tiles(q, k, G, t0, nt, i_s, h, H, K, BC, BK)  # [BC, BK] tiles
    ba = load_vec(beta, t0, rows, valid, h, H)  # [BC]
    ref = gate_row(G, t0 + tl.minimum(i_s * BC, nt - 1), h, H, K, 2, BK)  # [1, BK]
    ea = masked_exp(ga - ref, valid[:, None])  # [BC, BK]
    dq_m = tl.zeros([BC, BK], dtype=tl.float32)
    dk_r = tl.zeros([BC, BK], dtype=tl.float32)
    dk_c = tl.zeros([BC, BK], dtype=tl.float32)
    db = tl.sum(load_tile(dA, t0, rows, valid, h, H, BT, BT, 0) * load_tile(P, t0, rows, valid, h, H, BT, BT, 0), 1)
    for b in range(0, i_s):  # blocks left of the diagonal: a is the row
        rb = b * BC + ci
        vb = rb < nt
        gb = load_tile(G, t0, rb, vb, h, H, K, BK, 0)
        kb = load_tile(k, t0, rb, vb, h, H, K, BK, 0) * masked_exp(ref - gb, vb[:, None])  # [BC, BK]
        dm_ab = load_tile(dM, t0, rows, valid, h, H, BT, BC, b * BC)  # [BC, BC]
        da_ab = load_tile(dA, t0, rows, valid, h, H, BT, BC, b * BC)
        dq_m += dot(dm_ab, kb, PREC)
        dk_r += dot(da_ab * ba[:, None], kb, PREC)
    dq_m *= ea
    dk_r *= ea
    n_sub = tl.cdiv(nt, BC)
    for c in range(i_s + 1, n_sub):  # blocks below the diagonal: a is the column
        rc = c * BC + ci
        vc = rc < nt
        ref_c = gate_row(G, t0 + c * BC, h, H, K, 2, BK)
        ec = masked_exp(load_tile(G, t0, rc, vc, h, H, K, BK, 0) - ref_c, vc[:, None])  # [BC, BK]
        qc = load_tile(q, t0, rc, vc, h, H, K, BK, 0) * ec
        kc = load_tile(k, t0, rc, vc, h, H, K, BK, 0) * ec
        dm_ca = load_tile(dM, t0, rc, vc, h, H, BT, BC, i_s * BC)  # [BC, BC]
        dp_ca = load_tile(dA, t0, rc, vc, h, H, BT, BC, i_s * BC) * load_vec(beta, t0, rc, vc, h, H)[:, None]
        back = dot(tl.trans(dm_ca), qc, PREC) + dot(tl.trans(dp_ca), kc, PREC)  # [BC, BK]
        dk_c += back * masked_exp(ref_c - ga, valid[:, None])
    if sub_span(G, t0, i_s * BC, nt, h, H, K, BC, BK) <= DENSE_SPAN:  # the diagonal block by matmuls
        to_ref = masked_exp(ref - ga, valid[:, None])  # [BC, BK], in [1, e^DENSE_SPAN]
        kd = ka * to_ref
        both = valid[:, None] & valid[None, :]
        dm_t = load_tile(dM, t0, rows, valid, h, H, BT, BC, i_s * BC)  # [BC, BC]
        dm_aa = tl.where((ci[:, None] > ci[None, :]) & both, dm_t, 0.0)  # j = i: exactly, below
        dp_aa = tl.where((ci[:, None] > ci[None, :]) & both,
                         load_tile(dA, t0, rows, valid, h, H, BT, BC, i_s * BC), 0.0) * ba[:, None]
        dq_m += dot(dm_aa, kd, PREC) * ea
        dk_r += dot(dp_aa, kd, PREC) * ea
        back = dot(tl.trans(dm_aa), qa * ea, PREC) + dot(tl.trans(dp_aa), ka * ea, PREC)  # [BC, BK]
        dk_c += back * to_ref
        dm_ii = tl.sum(tl.where(ci[:, None] == ci[None, :], dm_t, 0.0), 1)[:, None]  # [BC, 1]
        dq_m += dm_ii * ka  # M's j = i term, exact (as the gates' gradient needs it to cancel)
        dk_c += dm_ii * qa
    else:  # strong decay inside the sub-chunk: exact, column by column
        cols = tl.arange(0, BK)
        for j in range(0, BC):
            kj = load_row(k, t0, i_s * BC + j, nt, h, H, K, BK)  # [BK], zero past the chunk
            gj = load_row(G, t0, i_s * BC + j, nt, h, H, K, BK)
            jm = (cols < K) & ((i_s * BC + j + cols * 0) < nt)  # [BK]
            e = masked_exp(ga - gj[None, :], valid[:, None] & (ci[:, None] >= j) & jm[None, :])  # [BC, BK]
            col = (t0 * H + h) * BT + i_s * BC + j
            dm_col = tl.load(dM + col + rows * (H * BT), mask=valid, other=0.0)  # [BC]: dM[:, j]
            dp_col = tl.load(dA + col + rows * (H * BT), mask=valid, other=0.0) * ba
            dq_m += dm_col[:, None] * kj[None, :] * e
            dk_r += dp_col[:, None] * kj[None, :] * e
            if DIAG == 0:
                col_j = tl.sum((dm_col[:, None] * qa + dp_col[:, None] * ka) * e, 0)  # [BK]
                dk_c += tl.where(ci[:, None] == j, col_j[None, :], 0.0)
        if DIAG == 1:  # row i adds to every column j ≤ i of the block: no cross-row sums
            for i in range(0, BC):
                r = i_s * BC + i  # local row
                qi = load_row(q, t0, r, nt, h, H, K, BK)  # [BK], zero past the chunk
                ki = load_row(k, t0, r, nt, h, H, K, BK)
                gi = load_row(G, t0, r, nt, h, H, K, BK)
                im = (cols < K) & ((r + cols * 0) < nt)  # [BK]: row i exists
                live = (ci <= i) & ((r + ci * 0) < nt)  # [BC]: columns j ≤ i
                row = (t0 + r) * H * BT + h * BT + i_s * BC + ci  # dM[i, j], dA[i, j] for the block's j
                dm_row = tl.load(dM + row, mask=live, other=0.0)  # [BC]
                b_i = tl.load(beta + (t0 + r) * H + h + ci * 0, mask=live, other=0.0).to(tl.float32)  # β_i
                dp_row = tl.load(dA + row, mask=live, other=0.0) * b_i
                e2 = masked_exp(gi[None, :] - ga, live[:, None] & im[None, :] & valid[:, None])  # [BC, BK]
                dk_c += (dm_row[:, None] * qi[None, :] + dp_row[:, None] * ki[None, :]) * e2
    finish_rows(dq, dk, dq_out, dk_out, dbeta, dG, t0, rows, valid, h, H, K, qa, ka, dq_m, dk_r, dk_c, db,
                2, BK)


settle(globals())  # Triton cache keys formed at import, whatever kernel runs first (jit_keys.py)
