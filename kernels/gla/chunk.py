"""Gated linear attention in Triton: chunked forward and backward (see README.md for the math).

Every batch is handled as packed variable-length sequences: ``[B, T, ...]`` becomes one
``[B·T, H, D]`` stream with boundaries every ``T``. Chunks never cross a boundary; the chunk
table (``chunk_seq``, ``chunk_start``) maps a program to its chunk, and ``chunk_first`` maps a
sequence to its first chunk for the state-passing kernels.

Forward: in-chunk cumulative log-gates ``b`` (fp32) → states entering each chunk ``h`` (one
program per sequence, head and K/V tile, looping over chunks) → the intra-chunk score matrix
``A`` (sub-chunks of 16 for stability) → ``o``. Backward takes ``A`` and ``h`` from the forward
(recomputing ``A`` took 2.4 of the forward's 3.5 ms in an H100 profile at B=8, T=4096, H=16;
``h`` would take a second sequential state pass), then runs the reverse state pass ``dh``,
``dA = scale · do vᵀ``, ``dv``, the intra-chunk ``dq, dk`` (per-channel gates) and finally the
inter-chunk ``dq, dk`` together with ``dg`` (a reverse cumulative sum inside the chunk).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..tuning import autotune
from .common import check_inputs, default_scale
from ..jit_keys import settle

SUB = 16  # sub-chunk size of the intra-chunk kernels
WARPS = 8  # for the 64×64-tile kernels: with 4, sm_90 builds spill registers (checked with ptxas)


@triton.jit
def _chunk_info(chunk_seq, chunk_start, cu, i_c, C: tl.constexpr):
    """First token ``t0`` (int64) of chunk ``i_c``, how many of its rows exist (``nv``, may exceed
    C), the local rows ``0..C-1`` and their validity. Tiles address rows relative to ``t0`` so
    that only the scalar base pointer is 64-bit."""
    n = tl.load(chunk_seq + i_c)
    t0 = tl.load(chunk_start + i_c).to(tl.int64)
    nv = (tl.load(cu + n + 1).to(tl.int64) - t0).to(tl.int32)
    rows = tl.arange(0, C)
    return t0, nv, rows, rows < nv


@triton.jit
def _tile(ptr, rows, valid, cols, ncols, stride):
    """Load ``ptr[rows, cols]`` (row stride ``stride``) as fp32, zero outside."""
    mask = valid[:, None] & (cols[None, :] < ncols)
    x = tl.load(ptr + rows[:, None] * stride + cols[None, :], mask=mask, other=0.0)
    return x.to(tl.float32)


@triton.jit
def _row(ptr, row, lim, cols, ncols, stride):
    """Load one row ``ptr[row, cols]`` as fp32, zero unless ``row < lim``."""
    mask = (cols < ncols) & (row + cols * 0 < lim)  # a block mask (scalar & block is not portable)
    return tl.load(ptr + row * stride + cols, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _mm(a, b, like, PREC: tl.constexpr, F32: tl.constexpr):
    """``a @ b`` accumulated in fp32, with the operands in ``like``'s element type (bf16/fp16
    tensor cores) or, with F32 (fp32 inputs), in fp32."""
    if F32:
        return tl.dot(a, b, input_precision=PREC)
    else:
        return tl.dot(a.to(like.dtype.element_ty), b.to(like.dtype.element_ty), input_precision=PREC)


@triton.jit
def _gates(gc, t0, i_h, rows, valid, ck, H: tl.constexpr, K: tl.constexpr, GATE: tl.constexpr):
    """In-chunk log-gates ``b`` of the rows: ``[C, BK]`` per channel (GATE 2), ``[C, 1]`` for a
    scalar gate ``gc: [TT, H]`` (GATE 1), zeros ``[C, 1]`` without a gate (GATE 0)."""
    if GATE == 2:
        return _tile(gc + t0 * (H * K) + i_h * K, rows, valid, ck, K, H * K)
    elif GATE == 1:
        return tl.load(gc + (t0 + rows) * H + i_h, mask=valid, other=0.0)[:, None]
    else:
        return (rows * 0).to(tl.float32)[:, None]


@triton.jit
def _gate_last(gc, t0, i_h, last, ck, H: tl.constexpr, K: tl.constexpr, GATE: tl.constexpr):
    """``b`` at the chunk's last row over the K tile, ``[BK]`` (a scalar gate broadcast)."""
    if GATE == 2:
        return _row(gc + t0 * (H * K) + i_h * K, last, last + 1, ck, K, H * K)
    elif GATE == 1:
        return tl.load(gc + (t0 + last) * H + i_h + ck * 0)
    else:
        return (ck * 0).to(tl.float32)


@triton.jit
def _cumsum_kernel(g, gc, chunk_seq, chunk_start, cu, H: tl.constexpr, K: tl.constexpr,
                   C: tl.constexpr, BK: tl.constexpr, GATE: tl.constexpr):
    """``gc[t] = Σ_{s in chunk, s <= t} g[s]`` in fp32; grid (chunks, heads, K tiles), one K
    tile for a scalar gate ``[TT, H]``."""
    i_c, i_h, i_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t0, nv, rows, valid = _chunk_info(chunk_seq, chunk_start, cu, i_c, C)
    if GATE == 2:
        cols = i_k * BK + tl.arange(0, BK)
        base = t0 * (H * K) + i_h * K
        y = tl.cumsum(_tile(g + base, rows, valid, cols, K, H * K), axis=0)  # [C, BK]
        mask = valid[:, None] & (cols[None, :] < K)
        tl.store(gc + base + rows[:, None] * (H * K) + cols[None, :], y, mask=mask)
    else:
        x = tl.load(g + (t0 + rows) * H + i_h, mask=valid, other=0.0).to(tl.float32)  # [C]
        tl.store(gc + (t0 + rows) * H + i_h, tl.cumsum(x, axis=0), mask=valid)


@triton.jit
def _state_program(cu, chunk_first, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                   BK: tl.constexpr, BV: tl.constexpr):
    """A state-pass program (grid: K tiles, V tiles, N · H): its sequence and head, the
    sequence's token bounds and first chunk, and the offsets and mask of its [BK, BV] tile."""
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(cu + i_n).to(tl.int64)
    eos = tl.load(cu + i_n + 1).to(tl.int64)
    c0 = tl.load(chunk_first + i_n).to(tl.int64)
    ck = i_k * BK + tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    smask = (ck[:, None] < K) & (cv[None, :] < V)
    soff = ck[:, None] * V + cv[None, :]
    return i_n, i_h, bos, eos, c0, ck, cv, smask, soff


@triton.jit
def _load_state(ptr, i_n, i_h, soff, smask, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                BK: tl.constexpr, BV: tl.constexpr, USE: tl.constexpr):
    """The program's tile of state ``i_n`` of a ``[N, H, K, V]`` tensor in fp32 (zeros unless USE)."""
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if USE:
        S += tl.load(ptr + (i_n * H + i_h) * K * V + soff, mask=smask, other=0.0).to(tl.float32)
    return S


# the state passes' candidates: the former fixed launch first (8 warps, default stages), then a
# wide value tile (k, the gates and q or do read once per K tile instead of once per 64 columns)
STATE_SHAPES = ((8, 3, {"WIDE": 0}), (8, 1, {"WIDE": 0}), (8, 3, {"WIDE": 1}), (8, 1, {"WIDE": 1}))


def wide_grid(m: "_Meta", lead: int, tail: int) -> Callable[[dict], tuple[int, int, int]]:
    """Grid ``(lead, V tiles, tail)`` of a kernel whose value tile is ``BV · (1 + WIDE)``:
    ``(K tiles, ·, N · H)`` for the state passes, ``(chunks, ·, heads)`` for the others."""
    return lambda meta: (lead, triton.cdiv(m.V, m.BV * (1 + meta["WIDE"])), tail)


@autotune(["H", "K", "V", "C", "BK", "BV0", "GATE", "F32"], STATE_SHAPES)
@triton.jit
def _fwd_state_kernel(k, v, gc, h, h0, ht, chunk_first, cu, H: tl.constexpr, K: tl.constexpr,
                      V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV0: tl.constexpr,
                      USE_H0: tl.constexpr, STORE_HT: tl.constexpr, GATE: tl.constexpr,
                      PREC: tl.constexpr, F32: tl.constexpr, WIDE: tl.constexpr):
    """States entering every chunk, ``h[c] : [K, V]``; grid (K tiles, V tiles, N · H)."""
    BV: tl.constexpr = BV0 * (1 + WIDE)
    i_n, i_h, bos, eos, c0, ck, cv, smask, soff = _state_program(cu, chunk_first, H, K, V, BK, BV)
    rows = tl.arange(0, C)
    S = _load_state(h0, i_n, i_h, soff, smask, H, K, V, BK, BV, USE_H0)  # [BK, BV]
    for i in range(0, tl.cdiv(eos - bos, C)):
        tl.store(h + ((c0 + i) * H + i_h) * K * V + soff, S.to(h.dtype.element_ty), mask=smask)
        t0 = bos + i * C
        nv = (eos - t0).to(tl.int32)
        valid = rows < nv
        last = tl.minimum(nv, C) - 1
        kt = _tile(k + t0 * (H * K) + i_h * K, rows, valid, ck, K, H * K)  # [C, BK]
        bt = _gates(gc, t0, i_h, rows, valid, ck, H, K, GATE)  # [C, BK] or [C, 1]
        vt = _tile(v + t0 * (H * V) + i_h * V, rows, valid, cv, V, H * V)  # [C, BV]
        bl = _gate_last(gc, t0, i_h, last, ck, H, K, GATE)  # [BK]
        kd = kt * tl.exp(tl.where(valid[:, None], bl[None, :] - bt, 0.0))
        S = S * tl.exp(bl)[:, None]
        S += _mm(tl.trans(kd), vt, k, PREC, F32)
    if STORE_HT:
        tl.store(ht + (i_n * H + i_h) * K * V + soff, S, mask=smask)


# Largest in-chunk decay span (nats, over one sub-chunk, any channel) at which a sub-chunk's
# diagonal block is formed by the matmul of the off-diagonal blocks: factors e^{b_t − b_ref} and
# e^{b_ref − b_j} then lie in [e^{-30}, e^{30}], far from float32's (and tf32's) overflow and
# underflow, so each product keeps its relative accuracy. Stronger decay takes the exact
# element-by-element loop. The dense matmuls take float32 operands (tf32 on the GPU) even for
# half inputs: the diagonal terms dominate the gates' gradient, which cancels, and bf16 operands
# put it 1.5-2.5e-2 off in bf16 runs (tests/kernels/test_gla.py); 60 nats with tf32 reached
# 4.5e-3 at 3-6 nats a token, 30 nats stays within 3.5e-3.
DENSE_SPAN = tl.constexpr(30.0)


@triton.jit
def _span(gb, first, nv, ck, K: tl.constexpr, stride, BC: tl.constexpr):
    """How far the log-gates fall across the sub-chunk starting at row ``first`` (its valid
    rows), the most over the channels ``ck``: a scalar ≥ 0."""
    last = tl.minimum(first + BC, nv) - 1
    fall = _row(gb, first, nv, ck, K, stride) - _row(gb, last, nv, ck, K, stride)  # [BK]
    return tl.max(tl.abs(fall), axis=0)


@autotune(["H", "K", "C", "BC", "BK", "F32"], ((8, 3), (4, 3), (2, 3), (4, 1)))
@triton.jit
def _intra_kernel(q, k, gc, A, chunk_seq, chunk_start, cu, scale, H: tl.constexpr,
                  K: tl.constexpr, C: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
                  PREC: tl.constexpr, F32: tl.constexpr):
    """Rows of one sub-chunk of ``A = scale · [q_t · (k_j ⊙ e^{b_t − b_j})]_{j<=t}``.

    Grid (chunks · C/BC, heads). One matmul against the reference ``b`` at the first row of this
    sub-chunk gives the earlier sub-chunks and, while the gates fall by at most ``DENSE_SPAN``
    across it, its own diagonal block too (then masked to j <= t); stronger decay takes the
    diagonal block element by element.
    """
    NS: tl.constexpr = C // BC
    i_c, i_s, i_h = tl.program_id(0) // NS, tl.program_id(0) % NS, tl.program_id(1)
    t0, nv, rows, valid = _chunk_info(chunk_seq, chunk_start, cu, i_c, C)
    off = t0 * (H * K) + i_h * K  # this chunk's first row, this head
    qb, kb_, gb = q + off, k + off, gc + off
    ri = tl.arange(0, BC)
    first = i_s * BC
    rows_i = first + ri
    valid_i = rows_i < nv
    before = (rows < first) & valid & (first + rows * 0 < nv)  # none if this block is empty
    upto = (rows < first + BC) & valid  # keys up to this sub-chunk's end (the dense form)
    acc = tl.zeros([BC, C], dtype=tl.float32)
    for kb in range(0, K, BK):
        ck = kb + tl.arange(0, BK)
        qi = _tile(qb, rows_i, valid_i, ck, K, H * K)  # [BC, BK]
        bi = _tile(gb, rows_i, valid_i, ck, K, H * K)  # [BC, BK]
        bref = _row(gb, first, nv, ck, K, H * K)  # [BK]
        qr = qi * tl.exp(tl.where(valid_i[:, None], bi - bref[None, :], 0.0))
        if _span(gb, first, nv, ck, K, H * K, BC) <= DENSE_SPAN:  # diagonal block by the matmul too
            ka = _tile(kb_, rows, upto, ck, K, H * K)  # [C, BK]
            kr = ka * tl.exp(tl.where(upto[:, None], bref[None, :] - _tile(gb, rows, upto, ck, K, H * K), 0.0))
            acc += tl.where(rows[None, :] < rows_i[:, None], _mm(qr, tl.trans(kr), q, PREC, True), 0.0)
            # j = t exactly (e^0): through the matmul's rounded factors its q·k term would not
            # cancel in the gates' gradient as it does in exact arithmetic
            diag = tl.sum(qi * _tile(kb_, rows_i, valid_i, ck, K, H * K), axis=1)  # [BC]
            acc += tl.where(rows[None, :] == rows_i[:, None], diag[:, None], 0.0)
        else:  # strong decay inside the sub-chunk: its diagonal block element by element
            ka = _tile(kb_, rows, before, ck, K, H * K)  # [C, BK]
            ba = _tile(gb, rows, before, ck, K, H * K)  # [C, BK]
            kr = ka * tl.exp(tl.where(before[:, None], bref[None, :] - ba, 0.0))
            acc += _mm(qr, tl.trans(kr), q, PREC, F32)
            for j in range(0, BC):
                kj = _row(kb_, first + j, nv, ck, K, H * K)  # [BK]
                bj = _row(gb, first + j, nv, ck, K, H * K)  # [BK]
                keep = ((ri >= j) & valid_i & (first + j + ri * 0 < nv))[:, None]
                e = tl.exp(tl.where(keep, bi - bj[None, :], 0.0))
                col = tl.sum(tl.where(keep, qi * kj[None, :] * e, 0.0), axis=1)  # [BC]
                acc += tl.where(rows[None, :] == first + j, col[:, None], 0.0)
    tl.store(A + t0 * (H * C) + i_h * C + rows_i[:, None] * (H * C) + rows[None, :], acc * scale,
             mask=valid_i[:, None])


@triton.jit
def _decay(gc, t0, i_h, rows, valid, H: tl.constexpr, GATE: tl.constexpr, UPPER: tl.constexpr):
    """``D_tj = e^{b_t − b_j}`` on ``j ≤ t`` (0 elsewhere) for a scalar or no gate, ``[C, C]``;
    transposed (``D[j, t]``) when UPPER. Exponents of masked entries are 0 before ``exp``."""
    if UPPER:
        keep = (rows[:, None] <= rows[None, :]) & valid[:, None] & valid[None, :]
    else:
        keep = (rows[:, None] >= rows[None, :]) & valid[:, None] & valid[None, :]
    if GATE == 1:
        b = tl.load(gc + (t0 + rows) * H + i_h, mask=valid, other=0.0)  # [C]
        diff = b[None, :] - b[:, None] if UPPER else b[:, None] - b[None, :]
        return tl.where(keep, tl.exp(tl.where(keep, diff, 0.0)), 0.0)
    else:
        return tl.where(keep, 1.0, 0.0)


@autotune(["H", "K", "C", "BK", "GATE", "F32"], ((4, 3), (8, 3), (4, 2)))
@triton.jit
def _intra_dense_kernel(q, k, gc, A, chunk_seq, chunk_start, cu, scale, H: tl.constexpr,
                        K: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, GATE: tl.constexpr,
                        PREC: tl.constexpr, F32: tl.constexpr):
    """``A = scale · (q kᵀ) ⊙ D`` for a scalar or no gate: one matmul per chunk, no sub-chunks
    (``e^{b_t − b_j}`` is one number per pair); grid (chunks, heads)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    t0, nv, rows, valid = _chunk_info(chunk_seq, chunk_start, cu, i_c, C)
    off = t0 * (H * K) + i_h * K
    acc = tl.zeros([C, C], dtype=tl.float32)
    for kb in range(0, K, BK):
        ck = kb + tl.arange(0, BK)
        qt = _tile(q + off, rows, valid, ck, K, H * K)  # [C, BK]
        kt = _tile(k + off, rows, valid, ck, K, H * K)  # [C, BK]
        acc += _mm(qt, tl.trans(kt), q, PREC, F32)
    acc = acc * _decay(gc, t0, i_h, rows, valid, H, GATE, False) * scale
    tl.store(A + t0 * (H * C) + i_h * C + rows[:, None] * (H * C) + rows[None, :], acc,
             mask=valid[:, None])


# WIDE (tuned): value tiles of 2·BV columns, so that q, the gates and A are read once per chunk
# for V = 128 instead of once per 64 columns (each program owns its columns: same numbers)
WIDE_SHAPES = ((8, 3, {"WIDE": 0}), (4, 3, {"WIDE": 0}), (8, 2, {"WIDE": 0}), (8, 2, {"WIDE": 1}),
               (8, 1, {"WIDE": 1}))


@autotune(["H", "K", "V", "C", "BK", "BV0", "GATE", "F32"], WIDE_SHAPES)
@triton.jit
def _fwd_o_kernel(q, v, gc, h, A, o, chunk_seq, chunk_start, cu, scale, H: tl.constexpr,
                  K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr,
                  BV0: tl.constexpr, GATE: tl.constexpr, PREC: tl.constexpr, F32: tl.constexpr,
                  WIDE: tl.constexpr):
    """``o = scale · (q ⊙ e^{b}) h + A v``; grid (chunks, V tiles, heads)."""
    BV: tl.constexpr = BV0 * (1 + WIDE)
    i_c, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t0, nv, rows, valid = _chunk_info(chunk_seq, chunk_start, cu, i_c, C)
    cv = i_v * BV + tl.arange(0, BV)
    hb = h + (i_c.to(tl.int64) * H + i_h) * K * V
    acc = tl.zeros([C, BV], dtype=tl.float32)
    for kb in range(0, K, BK):
        ck = kb + tl.arange(0, BK)
        qt = _tile(q + t0 * (H * K) + i_h * K, rows, valid, ck, K, H * K)  # [C, BK]
        bt = _gates(gc, t0, i_h, rows, valid, ck, H, K, GATE)  # [C, BK] or [C, 1]
        ht = _tile(hb, ck, ck < K, cv, V, V)  # [BK, BV]
        acc += _mm(qt * tl.exp(bt), ht, v, PREC, F32)
    acc *= scale
    at = _tile(A + t0 * (H * C) + i_h * C, rows, valid, rows, C, H * C)  # [C, C]
    vt = _tile(v + t0 * (H * V) + i_h * V, rows, valid, cv, V, H * V)  # [C, BV]
    acc += _mm(at, vt, v, PREC, F32)
    tl.store(o + t0 * (H * V) + i_h * V + rows[:, None] * (H * V) + cv[None, :],
             acc.to(o.dtype.element_ty), mask=valid[:, None] & (cv[None, :] < V))


@autotune(["H", "K", "V", "C", "BK", "BV0", "GATE", "F32"], STATE_SHAPES)
@triton.jit
def _bwd_state_kernel(q, do, gc, dh, dht, dh0, chunk_first, cu, scale, H: tl.constexpr,
                      K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr,
                      BV0: tl.constexpr, USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
                      GATE: tl.constexpr, PREC: tl.constexpr, F32: tl.constexpr,
                      WIDE: tl.constexpr):
    """Gradients of the states leaving every chunk, ``dh[c]``, in reverse; grid like the fwd."""
    BV: tl.constexpr = BV0 * (1 + WIDE)
    i_n, i_h, bos, eos, c0, ck, cv, smask, soff = _state_program(cu, chunk_first, H, K, V, BK, BV)
    rows = tl.arange(0, C)
    dS = _load_state(dht, i_n, i_h, soff, smask, H, K, V, BK, BV, USE_DHT)  # [BK, BV]
    nc = tl.cdiv(eos - bos, C)
    for r in range(0, nc):
        i = nc - 1 - r
        tl.store(dh + ((c0 + i) * H + i_h) * K * V + soff, dS.to(dh.dtype.element_ty), mask=smask)
        t0 = bos + i * C
        nv = (eos - t0).to(tl.int32)
        valid = rows < nv
        last = tl.minimum(nv, C) - 1
        qt = _tile(q + t0 * (H * K) + i_h * K, rows, valid, ck, K, H * K)  # [C, BK]
        bt = _gates(gc, t0, i_h, rows, valid, ck, H, K, GATE)  # [C, BK] or [C, 1]
        dot_ = _tile(do + t0 * (H * V) + i_h * V, rows, valid, cv, V, H * V)  # [C, BV]
        bl = _gate_last(gc, t0, i_h, last, ck, H, K, GATE)  # [BK]
        qd = qt * tl.exp(bt) * scale
        dS = dS * tl.exp(bl)[:, None]
        dS += _mm(tl.trans(qd), dot_, q, PREC, F32)
    if STORE_DH0:
        tl.store(dh0 + (i_n * H + i_h) * K * V + soff, dS, mask=smask)


@triton.jit
def _bwd_dA_kernel(do, v, dA, chunk_seq, chunk_start, cu, scale, H: tl.constexpr,
                   V: tl.constexpr, C: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
                   F32: tl.constexpr):
    """``dA = scale · do vᵀ`` on and below the diagonal; grid (chunks, heads)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    t0, nv, rows, valid = _chunk_info(chunk_seq, chunk_start, cu, i_c, C)
    acc = tl.zeros([C, C], dtype=tl.float32)
    for vb in range(0, V, BV):
        cv = vb + tl.arange(0, BV)
        dot_ = _tile(do + t0 * (H * V) + i_h * V, rows, valid, cv, V, H * V)  # [C, BV]
        vt = _tile(v + t0 * (H * V) + i_h * V, rows, valid, cv, V, H * V)  # [C, BV]
        acc += _mm(dot_, tl.trans(vt), v, PREC, F32)
    acc = tl.where(rows[:, None] >= rows[None, :], acc * scale, 0.0)
    tl.store(dA + t0 * (H * C) + i_h * C + rows[:, None] * (H * C) + rows[None, :], acc,
             mask=valid[:, None])


@autotune(["H", "K", "V", "C", "BK", "BV0", "GATE", "F32"], WIDE_SHAPES)
@triton.jit
def _bwd_dv_kernel(k, gc, A, do, dh, dv, chunk_seq, chunk_start, cu, H: tl.constexpr,
                   K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr,
                   BV0: tl.constexpr, GATE: tl.constexpr, PREC: tl.constexpr, F32: tl.constexpr,
                   WIDE: tl.constexpr):
    """``dv = Aᵀ do + (k ⊙ e^{b_C − b}) dh``; grid (chunks, V tiles, heads)."""
    BV: tl.constexpr = BV0 * (1 + WIDE)
    i_c, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t0, nv, rows, valid = _chunk_info(chunk_seq, chunk_start, cu, i_c, C)
    cv = i_v * BV + tl.arange(0, BV)
    last = tl.minimum(nv, C) - 1
    dhb = dh + (i_c.to(tl.int64) * H + i_h) * K * V
    at = _tile(A + t0 * (H * C) + i_h * C, rows, valid, rows, C, H * C)  # [C, C]
    dot_ = _tile(do + t0 * (H * V) + i_h * V, rows, valid, cv, V, H * V)  # [C, BV]
    acc = _mm(tl.trans(at), dot_, k, PREC, F32)  # [C, BV]
    for kb in range(0, K, BK):
        ck = kb + tl.arange(0, BK)
        kt = _tile(k + t0 * (H * K) + i_h * K, rows, valid, ck, K, H * K)  # [C, BK]
        bt = _gates(gc, t0, i_h, rows, valid, ck, H, K, GATE)  # [C, BK] or [C, 1]
        bl = _gate_last(gc, t0, i_h, last, ck, H, K, GATE)  # [BK]
        kd = kt * tl.exp(tl.where(valid[:, None], bl[None, :] - bt, 0.0))
        dht = _tile(dhb, ck, ck < K, cv, V, V)  # [BK, BV]
        acc += _mm(kd, dht, k, PREC, F32)
    tl.store(dv + t0 * (H * V) + i_h * V + rows[:, None] * (H * V) + cv[None, :],
             acc.to(dv.dtype.element_ty), mask=valid[:, None] & (cv[None, :] < V))


@autotune(["H", "K", "C", "BC", "BK", "F32"], ((8, 3), (4, 3), (2, 3), (4, 1)))
@triton.jit
def _bwd_intra_kernel(q, k, gc, dA, dq, dk, chunk_seq, chunk_start, cu, H: tl.constexpr,
                      K: tl.constexpr, C: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
                      PREC: tl.constexpr, F32: tl.constexpr):
    """Intra-chunk ``dq, dk`` (fp32) of one sub-chunk; grid (chunks · C/BC, heads, K tiles).

    ``dq_t = Σ_{j<=t} dA_tj k_j ⊙ e^{b_t − b_j}``, ``dk_j = Σ_{t>=j} dA_tj q_t ⊙ e^{b_t − b_j}``:
    earlier (later) sub-chunks by one matmul against a reference ``b`` at this sub-chunk's first
    (last) row; the diagonal block joins those matmuls while the gates fall by at most
    ``DENSE_SPAN`` across the sub-chunk, else it is summed element by element.
    """
    NS: tl.constexpr = C // BC
    i_c, i_s = tl.program_id(0) // NS, tl.program_id(0) % NS
    i_h, i_k = tl.program_id(1), tl.program_id(2)
    t0, nv, rows, valid = _chunk_info(chunk_seq, chunk_start, cu, i_c, C)
    off = t0 * (H * K) + i_h * K  # this chunk's first row, this head
    qb, kb_, gb = q + off, k + off, gc + off
    dAb = dA + t0 * (H * C) + i_h * C
    ri = tl.arange(0, BC)
    ck = i_k * BK + tl.arange(0, BK)
    first = i_s * BC
    last = tl.minimum(first + BC, nv) - 1
    rows_i = first + ri
    valid_i = rows_i < nv
    bi = _tile(gb, rows_i, valid_i, ck, K, H * K)  # [BC, BK]
    bref = _row(gb, first, nv, ck, K, H * K)  # [BK]: dq's reference, this sub-chunk's first row
    rref = _row(gb, last, nv, ck, K, H * K)  # [BK]: dk's reference, its last row
    span = _span(gb, first, nv, ck, K, H * K, BC)
    if span <= DENSE_SPAN:  # the diagonal block by the same matmuls (masked to j <= t)
        upto = (rows < first + BC) & valid
        ka = _tile(kb_, rows, upto, ck, K, H * K)  # [C, BK]
        kr = ka * tl.exp(tl.where(upto[:, None], bref[None, :] - _tile(gb, rows, upto, ck, K, H * K), 0.0))
        dAi = _tile(dAb, rows_i, valid_i, rows, first + BC, H * C)  # [BC, C]
        dAi = tl.where(rows[None, :] < rows_i[:, None], dAi, 0.0)  # j = t: exactly, below
        dqi = _mm(dAi, kr, q, PREC, True)
        from_i = (rows >= first) & valid
        qa = _tile(qb, rows, from_i, ck, K, H * K)  # [C, BK]
        qr = qa * tl.exp(tl.where(from_i[:, None], _tile(gb, rows, from_i, ck, K, H * K) - rref[None, :], 0.0))
        dAc = _tile(dAb + first, rows, from_i, ri, BC, H * C)  # [C, BC]
        dAc = tl.where(rows[:, None] > rows_i[None, :], dAc, 0.0)
        dki = _mm(tl.trans(dAc), qr, q, PREC, True)
    else:  # strong decay inside the sub-chunk: off-diagonal blocks by matmuls, the diagonal below
        # dq from earlier sub-chunks, reference at the first row of this one
        before = (rows < first) & valid & (first + rows * 0 < nv)  # none if this block is empty
        ka = _tile(kb_, rows, before, ck, K, H * K)  # [C, BK]
        ba = _tile(gb, rows, before, ck, K, H * K)  # [C, BK]
        kr = ka * tl.exp(tl.where(before[:, None], bref[None, :] - ba, 0.0))
        dAi = _tile(dAb, rows_i, valid_i, rows, first, H * C)  # [BC, C]
        dqi = _mm(dAi, kr, q, PREC, F32)
        # dk from later sub-chunks, reference at the last row of this one
        after = (rows >= first + BC) & valid
        qa = _tile(qb, rows, after, ck, K, H * K)  # [C, BK]
        ba2 = _tile(gb, rows, after, ck, K, H * K)  # [C, BK]
        qr = qa * tl.exp(tl.where(after[:, None], ba2 - rref[None, :], 0.0))
        dAc = _tile(dAb + first, rows, after, ri, BC, H * C)  # [C, BC]
        dki = _mm(tl.trans(dAc), qr, q, PREC, F32)
    dqi *= tl.exp(tl.where(valid_i[:, None], bi - bref[None, :], 0.0))
    dki *= tl.exp(tl.where(valid_i[:, None], rref[None, :] - bi, 0.0))
    if span <= DENSE_SPAN:  # j = t exactly: dq_t += dA_tt k_t, dk_t += dA_tt q_t
        dA_tt = tl.load(dAb + rows_i * (H * C) + rows_i, mask=valid_i, other=0.0)[:, None]  # [BC, 1]
        dqi += dA_tt * _tile(kb_, rows_i, valid_i, ck, K, H * K)
        dki += dA_tt * _tile(qb, rows_i, valid_i, ck, K, H * K)
    else:  # the diagonal block, element by element
        for j in range(0, BC):
            kj = _row(kb_, first + j, nv, ck, K, H * K)  # [BK]
            qj = _row(qb, first + j, nv, ck, K, H * K)  # [BK]
            bj = _row(gb, first + j, nv, ck, K, H * K)  # [BK]
            ok_j = first + j + ri * 0 < nv  # [BC] (row j of this block exists)
            dcol = tl.load(dAb + rows_i * (H * C) + first + j, mask=valid_i & (ri >= j),
                           other=0.0)  # [BC] dA[t, j] for rows t of this sub-chunk
            drow = tl.load(dAb + (first + j) * (H * C) + first + ri,
                           mask=(ri <= j) & ok_j, other=0.0)  # [BC] dA[j, s], columns s of the block
            low = ((ri >= j) & valid_i & ok_j)[:, None]
            up = ((ri <= j) & valid_i & ok_j)[:, None]
            dqi += dcol[:, None] * kj[None, :] * tl.exp(tl.where(low, bi - bj[None, :], 0.0))
            dki += drow[:, None] * qj[None, :] * tl.exp(tl.where(up, bj[None, :] - bi, 0.0))
    mask = valid_i[:, None] & (ck[None, :] < K)
    loc = rows_i[:, None] * (H * K) + ck[None, :]
    tl.store(dq + off + loc, dqi, mask=mask)
    tl.store(dk + off + loc, dki, mask=mask)


@triton.jit
def _intra_dense_grads(dA, gc, t0, i_h, rows, valid, qt, kt, like, H: tl.constexpr,
                       C: tl.constexpr, GATE: tl.constexpr, PREC: tl.constexpr,
                       F32: tl.constexpr):
    """Intra-chunk ``dq = (dA ⊙ D) k``, ``dk = (dA ⊙ D)ᵀ q`` ([C, BK] each, fp32) for a scalar
    or no gate, from ``dA`` in memory (``(dA ⊙ D)ᵀ`` is loaded transposed, not transposed)."""
    dAb = dA + t0 * (H * C) + i_h * C
    both = valid[:, None] & valid[None, :]
    dad = tl.load(dAb + rows[:, None] * (H * C) + rows[None, :], mask=both, other=0.0)  # [C, C]
    dad_t = tl.load(dAb + rows[None, :] * (H * C) + rows[:, None], mask=both, other=0.0)  # dAᵀ
    dad = dad * _decay(gc, t0, i_h, rows, valid, H, GATE, False)
    dad_t = dad_t * _decay(gc, t0, i_h, rows, valid, H, GATE, True)
    return _mm(dad, kt, like, PREC, F32), _mm(dad_t, qt, like, PREC, F32)


@autotune(["H", "K", "V", "C", "BK", "BV", "GATE", "F32"], ((8, 3), (4, 3), (8, 2)))
@triton.jit
def _bwd_inter_kernel(q, k, v, gc, h, dh, do, dA, dq, dk, dq_out, dk_out, dg, chunk_seq,
                      chunk_start, cu, scale,
                      TT, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr,
                      BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
                      PREC: tl.constexpr, F32: tl.constexpr):
    """Add the state terms to the intra-chunk ``dq, dk`` (fp32, from ``_bwd_intra_kernel`` for
    per-channel gates; formed here from ``dA`` for scalar or no gates) and store the sums in
    ``dq_out``, ``dk_out`` (the inputs' dtype: no cast pass afterwards); write ``dg``; grid
    (chunks, K, H).

    ``dq += scale e^{b} ⊙ (do hᵀ)``, ``dk += e^{b_C − b} ⊙ (v dhᵀ)``; ``db = q ⊙ dq − k ⊙ dk``,
    ``dg_t = Σ_{s>=t} db_s + e^{b_C} ⊙ Σ_v (h ⊙ dh) + Σ_j k_j ⊙ dk_j^{state}``. A scalar gate's
    ``dg`` is this summed over the K tile, into ``dg[i_k] : [TT, H]`` (torch sums the tiles).
    """
    i_c, i_k, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t0, nv, rows, valid = _chunk_info(chunk_seq, chunk_start, cu, i_c, C)
    ck = i_k * BK + tl.arange(0, BK)
    last = tl.minimum(nv, C) - 1
    hb = h + (i_c.to(tl.int64) * H + i_h) * K * V
    dhb = dh + (i_c.to(tl.int64) * H + i_h) * K * V
    dq_s = tl.zeros([C, BK], dtype=tl.float32)
    dk_s = tl.zeros([C, BK], dtype=tl.float32)
    hdh = tl.zeros([BK], dtype=tl.float32)
    for vb in range(0, V, BV):
        cv = vb + tl.arange(0, BV)
        dot_ = _tile(do + t0 * (H * V) + i_h * V, rows, valid, cv, V, H * V)  # [C, BV]
        vt = _tile(v + t0 * (H * V) + i_h * V, rows, valid, cv, V, H * V)  # [C, BV]
        ht = _tile(hb, ck, ck < K, cv, V, V)  # [BK, BV]
        dht = _tile(dhb, ck, ck < K, cv, V, V)  # [BK, BV]
        dq_s += _mm(dot_, tl.trans(ht), q, PREC, F32)
        dk_s += _mm(vt, tl.trans(dht), q, PREC, F32)
        hdh += tl.sum(ht * dht, axis=1)
    off = t0 * (H * K) + i_h * K
    qt = _tile(q + off, rows, valid, ck, K, H * K)  # [C, BK]
    kt = _tile(k + off, rows, valid, ck, K, H * K)  # [C, BK]
    bt = _gates(gc, t0, i_h, rows, valid, ck, H, K, GATE)  # [C, BK] or [C, 1]
    bl = _gate_last(gc, t0, i_h, last, ck, H, K, GATE)  # [BK]
    mask = valid[:, None] & (ck[None, :] < K)
    loc = rows[:, None] * (H * K) + ck[None, :]
    dq_s *= scale * tl.exp(bt)
    dk_s *= tl.exp(tl.where(valid[:, None], bl[None, :] - bt, 0.0))
    if GATE < 2:
        dqi, dki = _intra_dense_grads(dA, gc, t0, i_h, rows, valid, qt, kt, q, H, C, GATE, PREC,
                                      F32)
    else:
        dqi = tl.load(dq + off + loc, mask=mask, other=0.0)
        dki = tl.load(dk + off + loc, mask=mask, other=0.0)
    dqt = dqi + dq_s
    dkt = dki + dk_s
    tl.store(dq_out + off + loc, dqt.to(dq_out.dtype.element_ty), mask=mask)
    tl.store(dk_out + off + loc, dkt.to(dk_out.dtype.element_ty), mask=mask)
    if GATE > 0:
        db = qt * dqt - kt * dkt  # [C, BK]
        extra = tl.exp(bl) * hdh + tl.sum(kt * dk_s, axis=0)  # [BK]
        dgt = tl.sum(db, axis=0)[None, :] - tl.cumsum(db, axis=0) + db + extra[None, :]
        if GATE == 2:
            tl.store(dg + off + loc, dgt, mask=mask)
        else:
            tl.store(dg + i_k.to(tl.int64) * TT * H + (t0 + rows) * H + i_h, tl.sum(dgt, axis=1), mask=valid)


# ----------------------------------------------------------------------------- host side


def _block(d: int) -> int:
    """Tile size for a head dimension: a power of two in [16, 64]."""
    return max(16, min(64, triton.next_power_of_2(d)))


def _chunk_table(cu: Tensor, C: int, fixed: tuple[int, int] | None) -> tuple[Tensor, ...]:
    """``(chunk_seq, chunk_start, chunk_first)`` for sequences bounded by ``cu``.

    ``fixed = (B, T)`` builds the table on the device without a host sync.
    """
    dev = cu.device
    if fixed is not None:
        B, T = fixed
        nt = triton.cdiv(T, C)
        idx = torch.arange(B * nt, device=dev)
        seq = idx // nt  # [B · nt]
        start = seq * T + (idx % nt) * C  # [B · nt]
        first = torch.arange(B, device=dev) * nt  # [B]
        return seq.to(torch.int32), start.to(torch.int64), first.to(torch.int64)
    bounds = cu.tolist()
    seq, start, first = [], [], []
    for n, (bos, eos) in enumerate(zip(bounds[:-1], bounds[1:])):
        first.append(len(seq))
        for t in range(bos, eos, C):
            seq.append(n)
            start.append(t)
    return (torch.tensor(seq, dtype=torch.int32, device=dev),
            torch.tensor(start, dtype=torch.int64, device=dev),
            torch.tensor(first, dtype=torch.int64, device=dev))


@dataclass(frozen=True)
class _Meta:
    """Shapes, tiles, precision choices and the chunk table shared by all launches."""

    TT: int  # tokens in the packed stream
    H: int
    K: int
    V: int
    N: int  # sequences
    NC: int  # chunks
    C: int
    BK: int
    BV: int
    scale: float
    cu: Tensor  # [N + 1] int64
    seq: Tensor  # [NC] int32, sequence of each chunk
    start: Tensor  # [NC] int64, first token of each chunk
    first: Tensor  # [N] int64, first chunk of each sequence
    gate: int  # 0 no gate, 1 scalar [TT, H], 2 per channel [TT, H, K]
    prec: str  # tl.dot input precision: "ieee" for fp32 inputs
    f32: bool  # matmul operands in fp32
    state_dtype: torch.dtype  # per-chunk states h, dh

    @staticmethod
    def build(q: Tensor, v: Tensor, cu: Tensor, table: tuple[Tensor, ...], C: int,
              scale: float, gate: int) -> "_Meta":
        """From the flattened ``q: [TT, H, K]``, ``v: [TT, H, V]``, the chunk table and the gate
        mode."""
        TT, H, K = q.shape
        seq, start, first = table
        fp32 = q.dtype == torch.float32
        return _Meta(TT=TT, H=H, K=K, V=v.shape[-1], N=cu.numel() - 1, NC=seq.numel(), C=C,
                     BK=_block(K), BV=_block(v.shape[-1]), scale=scale, cu=cu, seq=seq,
                     start=start, first=first, gate=gate, prec="ieee" if fp32 else "tf32",
                     f32=fp32, state_dtype=torch.float32 if fp32 else q.dtype)

    @property
    def kw_tuned(self) -> dict:
        """Launch options of the autotuned kernels (their warps and stages come from the tuner)."""
        return {"GATE": self.gate, "PREC": self.prec, "F32": self.f32}


def _gate_cumsum(g: Tensor | None, m: _Meta, device: torch.device) -> Tensor:
    """In-chunk cumulative log-gates, fp32 ``[TT, H, K]`` or ``[TT, H]`` (a scalar gate); a
    one-element placeholder without a gate (never read)."""
    if g is None:
        return torch.zeros(1, dtype=torch.float32, device=device)
    gc = torch.empty(g.shape, dtype=torch.float32, device=g.device)
    grid = (m.NC, m.H, triton.cdiv(m.K, m.BK) if m.gate == 2 else 1)
    _cumsum_kernel[grid](g, gc, m.seq, m.start, m.cu, m.H, m.K, m.C, m.BK, m.gate)
    return gc


def _states(k: Tensor, v: Tensor, gc: Tensor, h0: Tensor | None, want_ht: bool,
            m: _Meta) -> tuple[Tensor, Tensor | None]:
    """States entering each chunk ``[NC, H, K, V]`` and the final states ``[N, H, K, V]``."""
    h = torch.empty(m.NC, m.H, m.K, m.V, dtype=m.state_dtype, device=k.device)
    ht = torch.empty(m.N, m.H, m.K, m.V, dtype=torch.float32, device=k.device) if want_ht else None
    grid = wide_grid(m, triton.cdiv(m.K, m.BK), m.N * m.H)
    _fwd_state_kernel[grid](k, v, gc, h, h0 if h0 is not None else h, ht if want_ht else h,
                            m.first, m.cu, m.H, m.K, m.V, m.C, m.BK, m.BV, h0 is not None, want_ht,
                            **m.kw_tuned)
    return h, ht


def _scores(q: Tensor, k: Tensor, gc: Tensor, m: _Meta) -> Tensor:
    """Intra-chunk scores ``A: [TT, H, C]`` (fp32, scale included)."""
    A = torch.empty(m.TT, m.H, m.C, dtype=torch.float32, device=q.device)
    if m.gate < 2:
        _intra_dense_kernel[(m.NC, m.H)](q, k, gc, A, m.seq, m.start, m.cu, m.scale, m.H, m.K,
                                         m.C, m.BK, **m.kw_tuned)
        return A
    kw = {"PREC": m.prec, "F32": m.f32}
    _intra_kernel[(m.NC * (m.C // SUB), m.H)](q, k, gc, A, m.seq, m.start, m.cu, m.scale, m.H,
                                             m.K, m.C, SUB, m.BK, **kw)
    return A


def _forward(q: Tensor, k: Tensor, v: Tensor, gc: Tensor, h0: Tensor | None, want_ht: bool,
             m: _Meta) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """``o: [TT, H, V]``, the final states, and the scores ``A`` and chunk states ``h`` (kept
    for the backward)."""
    h, ht = _states(k, v, gc, h0, want_ht, m)
    A = _scores(q, k, gc, m)
    o = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    _fwd_o_kernel[wide_grid(m, m.NC, m.H)](q, v, gc, h, A, o, m.seq, m.start, m.cu, m.scale, m.H,
                                           m.K, m.V, m.C, m.BK, m.BV, **m.kw_tuned)
    return o, ht, A, h


def _backward(q: Tensor, k: Tensor, v: Tensor, gc: Tensor, A: Tensor, h: Tensor,
              h0: Tensor | None, do: Tensor, dht: Tensor | None, m: _Meta) -> tuple[Tensor, ...]:
    """``dq, dk, dv`` (the inputs' dtype), ``dg`` (fp32) and ``dh0`` (or None). ``A`` and the
    chunk states ``h`` are the forward's: recomputing ``A`` costs as much as the rest of the forward, ``h``
    a second sequential state pass (``h`` is kept in the input's dtype, like fla's)."""
    dh = torch.empty(m.NC, m.H, m.K, m.V, dtype=m.state_dtype, device=q.device)
    dh0 = torch.empty(m.N, m.H, m.K, m.V, dtype=torch.float32, device=q.device)
    grid = wide_grid(m, triton.cdiv(m.K, m.BK), m.N * m.H)
    _bwd_state_kernel[grid](q, do, gc, dh, dht if dht is not None else dh, dh0, m.first, m.cu,
                            m.scale, m.H, m.K, m.V, m.C, m.BK, m.BV, dht is not None,
                            h0 is not None, **m.kw_tuned)
    dA = torch.empty(m.TT, m.H, m.C, dtype=torch.float32, device=q.device)
    _bwd_dA_kernel[(m.NC, m.H)](do, v, dA, m.seq, m.start, m.cu, m.scale, m.H, m.V, m.C, m.BV,
                                PREC=m.prec, F32=m.f32, num_warps=WARPS)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    _bwd_dv_kernel[wide_grid(m, m.NC, m.H)](k, gc, A, do, dh, dv, m.seq, m.start, m.cu, m.H, m.K,
                                            m.V, m.C, m.BK, m.BV, **m.kw_tuned)
    nk = triton.cdiv(m.K, m.BK)
    dq_out, dk_out = torch.empty_like(q), torch.empty_like(k)  # [TT, H, K], the inputs' dtype
    dq, dk = dq_out, dk_out  # scalar or no gate: the inter kernel forms the intra terms itself
    if m.gate == 2:  # per channel: intra-chunk dq, dk (fp32) by sub-chunks first
        dq = torch.empty(m.TT, m.H, m.K, dtype=torch.float32, device=q.device)
        dk = torch.empty_like(dq)
        _bwd_intra_kernel[(m.NC * (m.C // SUB), m.H, nk)](q, k, gc, dA, dq, dk, m.seq, m.start,
                                                          m.cu, m.H, m.K, m.C, SUB, m.BK,
                                                          PREC=m.prec, F32=m.f32)
    # per channel: dg like dq; scalar: one [TT, H] slice per K tile, summed below; none: unused
    f32 = dict(dtype=torch.float32, device=q.device)
    dg = torch.empty((nk, m.TT, m.H) if m.gate == 1 else (m.TT, m.H, m.K) if m.gate else (1,), **f32)
    _bwd_inter_kernel[(m.NC, nk, m.H)](q, k, v, gc, h, dh, do, dA, dq, dk, dq_out, dk_out, dg,
                                       m.seq, m.start, m.cu, m.scale, m.TT, m.H, m.K, m.V, m.C,
                                       m.BK, m.BV, **m.kw_tuned)
    dg = dg.sum(0) if m.gate == 1 else dg
    return dq_out, dk_out, dv, dg, (dh0 if h0 is not None else None)


class _ChunkGLA(torch.autograd.Function):
    """Flattened ``[TT, H, D]`` inputs; forward and backward by the kernels above."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, h0: Tensor | None,
                m: _Meta, want_ht: bool) -> tuple[Tensor, Tensor | None]:
        gc = _gate_cumsum(g, m, q.device)
        o, ht, A, h = _forward(q, k, v, gc, h0, want_ht, m)
        ctx.save_for_backward(q, k, v, gc, A, h, h0)
        ctx.m = m
        ctx.g_dtype = None if g is None else g.dtype
        return o, ht

    @staticmethod
    @once_differentiable  # the kernels' backward is not itself differentiable
    def backward(ctx, do: Tensor, dht: Tensor | None):
        q, k, v, gc, A, h, h0 = ctx.saved_tensors
        dht = None if dht is None else dht.float().contiguous()
        dq, dk, dv, dg, dh0 = _backward(q, k, v, gc, A, h, h0, do.contiguous(), dht, ctx.m)
        dg = None if ctx.g_dtype is None else dg.to(ctx.g_dtype)
        dh0 = None if dh0 is None else dh0.to(h0.dtype)
        return dq, dk, dv, dg, dh0, None, None


def chunk_gla(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None,
              scale: float | None = None, initial_state: Tensor | None = None,
              output_final_state: bool = False, cu_seqlens: Tensor | None = None,
              chunk_size: int = 64) -> tuple[Tensor, Tensor | None]:
    """Gated linear attention by the Triton chunk kernels; contract of ``naive.recurrent_gla``.

    Runs on CUDA, or on CPU tensors under ``TRITON_INTERPRET=1``. ``chunk_size`` is 16, 32, 64
    or 128. Scalar gates ``[B, T, H]`` are broadcast over K (their gradient is summed back).
    """
    check_inputs(q, k, v, g, initial_state, cu_seqlens)
    if chunk_size not in (16, 32, 64, 128):
        raise ValueError(f"chunk_size must be 16, 32, 64 or 128 for Triton, got {chunk_size}")
    B, T, H, K = q.shape
    V = v.shape[-1]
    if T == 0:
        n = B if cu_seqlens is None else cu_seqlens.numel() - 1
        final = (initial_state.float() if initial_state is not None
                 else q.new_zeros(n, H, K, V, dtype=torch.float32))
        return v.new_zeros(v.shape), (final if output_final_state else None)
    if cu_seqlens is None:
        cu = torch.arange(0, B * T + 1, T, device=q.device, dtype=torch.int64)  # [B + 1]
        table = _chunk_table(cu, chunk_size, (B, T))
    else:
        cu = cu_seqlens.to(device=q.device, dtype=torch.int64)  # [N + 1]
        table = _chunk_table(cu, chunk_size, None)
    flat = [x.reshape(B * T, H, x.shape[-1]).contiguous() for x in (q, k, v)]  # [TT, H, D]
    gf = None if g is None else g.reshape(B * T, *g.shape[2:]).contiguous()  # [TT, H(, K)]
    gate = 0 if g is None else 1 if g.dim() == 3 else 2
    h0 = None if initial_state is None else initial_state.contiguous()  # [N, H, K, V]
    m = _Meta.build(flat[0], flat[2], cu, table, chunk_size, default_scale(scale, K), gate)
    o, ht = _ChunkGLA.apply(*flat, gf, h0, m, output_final_state)
    return o.reshape(B, T, H, V), ht


settle(globals())  # Triton cache keys formed at import, whatever kernel runs first (jit_keys.py)
