"""Forward Triton kernels of the fused deep-memory chunk step (see ``step.py``)."""
from __future__ import annotations

import triton
import triton.language as tl

from ..tuning import autotune
from ..jit_keys import settle


@triton.jit
def _act_fwd(h, ACT: tl.constexpr):
    """The activation between the two layers."""
    if ACT == 1:
        return 0.5 * h * (1.0 + tl.math.erf(h * 0.7071067811865476))
    elif ACT == 2:
        return h * tl.sigmoid(h)
    elif ACT == 3:
        return tl.maximum(h, 0.0)
    else:
        return h


@triton.jit
def _act_grad(h, ACT: tl.constexpr):
    """Its derivative."""
    if ACT == 1:
        return 0.5 * (1.0 + tl.math.erf(h * 0.7071067811865476)) + h * 0.3989422804014327 * tl.exp(-0.5 * h * h)
    elif ACT == 2:
        s = tl.sigmoid(h)
        return s * (1.0 + h * (1.0 - s))
    elif ACT == 3:
        return tl.where(h > 0.0, 1.0, 0.0)
    else:
        return h * 0.0 + 1.0


@triton.jit
def _act_grad2(h, ACT: tl.constexpr):
    """Its second derivative."""
    if ACT == 1:
        return 0.3989422804014327 * tl.exp(-0.5 * h * h) * (2.0 - h * h)
    elif ACT == 2:
        s = tl.sigmoid(h)
        return s * (1.0 - s) * (2.0 + h * (1.0 - 2.0 * s))
    else:
        return h * 0.0


@triton.jit
def _hidden_block(C, K, HD, V, BC: tl.constexpr, BK: tl.constexpr, BH: tl.constexpr,
                  BV: tl.constexpr):
    """A hidden-block program's (batch·head i, block j), its row / key / value / hidden index
    ranges and their validity masks."""
    i, j = tl.program_id(0).to(tl.int64), tl.program_id(1)
    rc, rk, rv = tl.arange(0, BC), tl.arange(0, BK), tl.arange(0, BV)
    ch = j * BH + tl.arange(0, BH)
    return i, j, rc, rk, rv, ch, rc < C, rk < K, rv < V, ch < HD


@triton.jit
def _w1_tile(i, kk, ch, K, HD):
    """Pointers ``[len(kk), BH]`` and mask of rows ``kk`` of a ``[N, K, HD]`` weight (W1, Z1 or
    a gradient of one), hidden columns ``ch`` of batch·head i."""
    return i * K * HD + kk[:, None] * HD + ch[None, :], (kk < K)[:, None] & (ch < HD)[None, :]


@triton.jit
def _w2_tile(i, ch, vv, HD, V):
    """Pointers ``[BH, len(vv)]`` and mask of a ``[N, HD, V]`` weight's hidden rows ``ch``,
    columns ``vv``."""
    return i * HD * V + ch[:, None] * V + vv[None, :], (ch < HD)[:, None] & (vv < V)[None, :]


# the ACT and BIAS codes of the config's activation and bias, as the kernels read them
ACT_CODES = {"identity": 0, "gelu": 1, "silu": 2, "relu": 3}  # _act_fwd
BIAS_CODES = {"dot": 0, "l2": 1, "lp": 2, "huber": 3, "robust": 4}  # DOT ... ROBUST below

# attentional biases (BIAS) and the smoothing constants of memory.py (LP_EPS, ROBUST_EPS)
DOT = tl.constexpr(0)
L2 = tl.constexpr(1)
LP = tl.constexpr(2)
HUBER = tl.constexpr(3)
ROBUST = tl.constexpr(4)
SMOOTH = tl.constexpr(1e-6)


@triton.jit
def _bias_grad(r0, d, bp, m, BIAS: tl.constexpr):
    """``dl/dy`` from the residual ``r0 = y - v [BC, BV]`` (memory.bias_grad): ``bp`` is p (lp) or
    the radius (robust), ``d [BC]`` the huber threshold per row. Returns ``(r, n2)``,
    ``n2 = ||r0||^2`` per row."""
    n2 = tl.sum(r0 * r0, 1)  # [BC]
    if BIAS == L2:
        r = r0
    elif BIAS == LP:
        r = r0 * tl.exp((0.5 * bp - 1.0) * tl.log(r0 * r0 + SMOOTH))
    elif BIAS == HUBER:
        r = r0 * (d / tl.sqrt(tl.maximum(n2, d * d)))[:, None]  # r0 min(1, d / ||r0||)
    else:  # ROBUST
        r = r0 * (1.0 + bp / tl.sqrt(n2 + SMOOTH))[:, None]
    return tl.where(m, r, 0.0), n2


@triton.jit
def _output_error(y0, m, k_tile, v_tile, d, bp, V, eps, NORM: tl.constexpr, RES: tl.constexpr,
                  BIAS: tl.constexpr):
    """From the MLP output ``y0 [BC, BV]``: LayerNorm (``x_hat``, ``rstd``), residual, and the
    bias gradient ``r = dl/dy``. Returns ``(r, r0, n2, x_hat, rstd)``: ``r0 = y - v``, ``n2`` its
    squared row norms (``x_hat = y0`` without LayerNorm; ``r0, n2`` unused by the dot bias)."""
    x_hat = y0
    rstd = tl.sum(y0, 1) * 0.0 + 1.0
    if NORM:
        xc = tl.where(m, y0 - (tl.sum(y0, 1) / V)[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 1) / V + eps)
        x_hat = xc * rstd[:, None]
    y = x_hat
    if RES:
        y += tl.load(k_tile, mask=m, other=0.0)  # residual needs K == V
    vt = tl.load(v_tile, mask=m, other=0.0)
    r0 = tl.where(m, y - vt, 0.0)
    if BIAS == DOT:
        r, n2 = tl.where(m, -vt, 0.0), rstd
    else:
        r, n2 = _bias_grad(r0, d, bp, m, BIAS)
    return r, r0, n2, x_hat, rstd


@triton.jit
def _ln_grad(g, x_hat, rstd, m, V):
    """LayerNorm's input gradient for the output gradient ``g``: ``rstd (g - mean(g) - x_hat
    mean(g x_hat))`` per row (a symmetric map, so it is also the adjoint of itself)."""
    mean_g = tl.sum(g, 1) / V
    mean_gx = tl.sum(g * x_hat, 1) / V
    return tl.where(m, rstd[:, None] * (g - mean_g[:, None] - x_hat * mean_gx[:, None]), 0.0)


@triton.jit
def _keys_block(k, w1, w2, h_out, a_out, y_part, i, j, rc, rk, rv, ch, mc, mk, mv, mh, C, K, HD, V,
                ACT: tl.constexpr, PREC: tl.constexpr):
    """Hidden block j of (batch, head) i (the index ranges and masks of ``_hidden_block``): h,
    a = act(h), and the share a W2[j, :] of y0."""
    nj = tl.num_programs(1)
    kt = tl.load(k + i * C * K + rc[:, None] * K + rk[None, :], mask=mc[:, None] & mk[None, :], other=0.0)
    w1t = tl.load(w1 + i * K * HD + rk[:, None] * HD + ch[None, :], mask=mk[:, None] & mh[None, :], other=0.0)
    h = tl.dot(kt, w1t, input_precision=PREC)  # [BC, BH]
    ch_mask = mc[:, None] & mh[None, :]
    off = i * C * HD + rc[:, None] * HD + ch[None, :]
    tl.store(h_out + off, h, mask=ch_mask)
    tl.store(a_out + off, _act_fwd(h, ACT), mask=ch_mask)
    tl.debug_barrier()
    a = tl.load(a_out + off, mask=ch_mask, other=0.0)  # through memory: a dot's result
    w2t = tl.load(w2 + i * HD * V + ch[:, None] * V + rv[None, :], mask=mh[:, None] & mv[None, :], other=0.0)
    part = tl.dot(a, w2t, input_precision=PREC)  # [BC, BV]
    tl.store(y_part + (i * nj + j) * C * V + rc[:, None] * V + rv[None, :], part,
             mask=mc[:, None] & mv[None, :])


@autotune(["C", "K", "HD", "V", "BC", "BK", "BH", "BV", "ACT", "PREC"], ((4, 3), (8, 3)))
@triton.jit
def _keys_kernel(k, w1, w2, h_out, a_out, y_part, C, K, HD, V,
                 BC: tl.constexpr, BK: tl.constexpr, BH: tl.constexpr, BV: tl.constexpr,
                 ACT: tl.constexpr, PREC: tl.constexpr):
    """Hidden block j of (batch, head) i: h, a = act(h), and the share a W2[j, :] of y0 (the
    first chunk's; later chunks' run in the update kernel of the chunk before, NEXT)."""
    i, j, rc, rk, rv, ch, mc, mk, mv, mh = _hidden_block(C, K, HD, V, BC, BK, BH, BV)
    _keys_block(k, w1, w2, h_out, a_out, y_part, i, j, rc, rk, rv, ch, mc, mk, mv, mh, C, K, HD, V,
                ACT, PREC)


# One program per (batch, head) holds ~10 [C, V] fp32 tiles: with 4 warps the sm_90 builds
# spilled 1.2-1.9 KB of registers per thread, with 8 or 16 warps 0-160 B (compile_check).
# The bias kernels are row-local (LayerNorm, residual, the bias and their backward act on each
# token's row): a program takes BR rows of one (batch, head), so a chunk of 64 makes up to eight
# programs per head instead of one (32 programs at titans-pytorch's shape filled a quarter of an
# H100). At 4 warps with 64 rows the sm_90 builds spilled 6-8 KB per thread; the first candidate
# is the former launch (16 warps, the whole chunk).
BIAS_SHAPES = ((16, 1, {"BR": 64}), (8, 1, {"BR": 32}), (4, 1, {"BR": 16}), (2, 1, {"BR": 8}))


def bias_grid(n: int, c: int):
    """Grid of the bias kernels: (batch·head, row blocks of BR)."""
    return lambda meta: (n, triton.cdiv(c, meta["BR"]))


@autotune(["C", "V", "BV", "NORM", "RES", "BIAS"], BIAS_SHAPES)
@triton.jit
def _bias_kernel(y_part, k, v, delta, y0_out, dz_out, NJ, C, V, eps, bp,
                 BR: tl.constexpr, BV: tl.constexpr, NORM: tl.constexpr, RES: tl.constexpr,
                 BIAS: tl.constexpr):
    """(batch, head) i, rows of block r: y0 from the shares, the output, the bias gradient and
    dz. ``delta``: the huber threshold per token ``[N, C]`` (read with BIAS == HUBER only)."""
    i = tl.program_id(0).to(tl.int64)
    rc, rv = tl.program_id(1) * BR + tl.arange(0, BR), tl.arange(0, BV)
    m = (rc < C)[:, None] & (rv < V)[None, :]
    tile = rc[:, None] * V + rv[None, :]
    y0 = tl.zeros([BR, BV], dtype=tl.float32)
    for j in range(0, NJ):
        y0 += tl.load(y_part + (i * NJ + j) * C * V + tile, mask=m, other=0.0)
    tl.store(y0_out + i * C * V + tile, y0, mask=m)  # kept for the backward
    d = rc * 0.0  # [BR] the huber threshold of each row
    if BIAS == HUBER:
        d = tl.load(delta + i * C + rc, mask=rc < C, other=1.0)
    r, _, _, x_hat, rstd = _output_error(y0, m, k + i * C * V + tile, v + i * C * V + tile, d, bp,
                                         V, eps, NORM, RES, BIAS)
    if NORM:  # back through LayerNorm
        r = _ln_grad(r, x_hat, rstd, m, V)
    tl.store(dz_out + i * C * V + tile, r, mask=m)


@autotune(["C", "K", "HD", "V", "BC", "BK", "BH", "BV", "SUB", "ACT", "MOM", "NEXT", "PREC"],
          ((4, 3), (8, 3), (16, 1), (8, 1)))
@triton.jit
def _update_kernel(k, h_in, a_in, dz, w1, w2, z1, z2, gam, e, mom, dl, zl,
                   d1_out, w1n, w2n, z1n, z2n, k_next, h_next, a_next, y_part, C, K, HD, V,
                   BC: tl.constexpr, BK: tl.constexpr, BH: tl.constexpr, BV: tl.constexpr,
                   SUB: tl.constexpr, ACT: tl.constexpr, MOM: tl.constexpr, NEXT: tl.constexpr,
                   PREC: tl.constexpr):
    """Hidden block j of (batch, head) i: d1 and the chunk-end W1[:, j], W2[j, :] (and Z).
    The key and value dimensions go SUB at a time (contraction of ``dz W2^T``, rows of the new
    W1, columns of the new W2), one layer stored before the next is formed. With NEXT, then the
    next chunk's keys forward through the new block (``_keys_kernel``'s work for keys
    ``k_next``: h, a and the share of y0), reading the block back from its own stores (warm in
    cache): one launch per chunk fewer. (Forming h, y0 of the next chunk from the new tiles as
    they are made kept two more [C, BH] tiles live through the update: sm_90 builds spilled
    400 B per thread instead of 88 B.)"""
    i, j, rc, rk, rv, ch, mc, mk, mv, mh = _hidden_block(C, K, HD, V, BC, BK, BH, BV)
    rs = tl.arange(0, SUB)
    off = i * C * HD + rc[:, None] * HD + ch[None, :]
    ch_mask = mc[:, None] & mh[None, :]
    mm = tl.zeros([BC, BH], dtype=tl.float32)  # dz W2^T
    for v0 in range(0, BV, SUB):
        vv = v0 + rs
        dzs = tl.load(dz + i * C * V + rc[:, None] * V + vv[None, :], mask=mc[:, None] & (vv < V)[None, :], other=0.0)
        w2T = tl.load(w2 + i * HD * V + ch[None, :] * V + vv[:, None], mask=(vv < V)[:, None] & mh[None, :], other=0.0)
        mm += tl.dot(dzs, w2T, input_precision=PREC)
    h = tl.load(h_in + off, mask=ch_mask, other=0.0)
    tl.store(d1_out + off, mm * _act_grad(h, ACT), mask=ch_mask)  # d1 [BC, BH]
    tl.debug_barrier()
    d1 = tl.load(d1_out + off, mask=ch_mask, other=0.0)  # through memory: a dot's result
    dlv = tl.load(dl + i * C + rc, mask=mc, other=0.0)  # [BC] row `last` of the step weights
    g = tl.load(gam + i)
    ev, mv_, zlv = g * 0.0, g * 0.0, dlv * 0.0
    if MOM:
        ev, mv_ = tl.load(e + i), tl.load(mom + i)
        zlv = tl.load(zl + i * C + rc, mask=mc, other=0.0)
    d1l, d1z = d1 * dlv[:, None], d1 * zlv[:, None]
    for k0 in range(0, BK, SUB):  # W1[:, j] rows k0.. [SUB, BH]
        kk = k0 + rs
        kT = tl.load(k + i * C * K + rc[None, :] * K + kk[:, None], mask=(kk < K)[:, None] & mc[None, :], other=0.0)
        p1, m1 = _w1_tile(i, kk, ch, K, HD)
        new1 = g * tl.load(w1 + p1, mask=m1, other=0.0) + tl.dot(kT, d1l, input_precision=PREC)
        if MOM:
            z1t = tl.load(z1 + p1, mask=m1, other=0.0)
            new1 += ev * z1t
            tl.store(z1n + p1, mv_ * z1t + tl.dot(kT, d1z, input_precision=PREC), mask=m1)
        tl.store(w1n + p1, new1, mask=m1)
    aT = tl.load(a_in + i * C * HD + rc[None, :] * HD + ch[:, None], mask=mh[:, None] & mc[None, :], other=0.0)
    for v0 in range(0, BV, SUB):  # W2[j, :] columns v0.. [BH, SUB]
        vv = v0 + rs
        dzs = tl.load(dz + i * C * V + rc[:, None] * V + vv[None, :], mask=mc[:, None] & (vv < V)[None, :], other=0.0)
        p2, m2 = _w2_tile(i, ch, vv, HD, V)
        new2 = g * tl.load(w2 + p2, mask=m2, other=0.0) + tl.dot(aT, dzs * dlv[:, None], input_precision=PREC)
        if MOM:
            z2t = tl.load(z2 + p2, mask=m2, other=0.0)
            new2 += ev * z2t
            tl.store(z2n + p2, mv_ * z2t + tl.dot(aT, dzs * zlv[:, None], input_precision=PREC), mask=m2)
        tl.store(w2n + p2, new2, mask=m2)
    if NEXT:  # the new block as the keys kernel would read it, from this program's own stores
        tl.debug_barrier()
        _keys_block(k_next, w1n, w2n, h_next, a_next, y_part, i, j, rc, rk, rv, ch, mc, mk, mv, mh,
                    C, K, HD, V, ACT, PREC)


settle(globals())  # Triton cache keys formed at import, whatever kernel runs first (jit_keys.py)
