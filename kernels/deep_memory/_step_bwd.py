"""Backward Triton kernels of the fused deep-memory chunk step (see ``step.py``)."""
from __future__ import annotations

import triton
import triton.language as tl

from ..tuning import autotune

from ._step_fwd import (
    BIAS_SHAPES, DOT, HUBER, L2, LP, SMOOTH, _act_grad, _act_grad2, _hidden_block, _ln_grad,
    _output_error, _w1_tile, _w2_tile,
)
from ..jit_keys import settle


@triton.jit
def _dot_all(x, y):
    """Sum of all entries of ``x * y`` (a Frobenius inner product of two tiles)."""
    return tl.sum(tl.sum(x * y, 1), 0)


@triton.jit
def _tile_scalars(w, z, g_wn, g_zn, p, m, MOM: tl.constexpr):
    """One state tile's shares of ``<W, gW'>``, ``<Z, gW'>``, ``<Z, gZ'>`` (zeros without MOM)."""
    gw = tl.load(g_wn + p, mask=m, other=0.0)
    s_gam = _dot_all(tl.load(w + p, mask=m, other=0.0), gw)
    s_e, s_m = s_gam * 0.0, s_gam * 0.0
    if MOM:
        zt = tl.load(z + p, mask=m, other=0.0)
        s_e = _dot_all(zt, gw)
        s_m = _dot_all(zt, tl.load(g_zn + p, mask=m, other=0.0))
    return s_gam, s_e, s_m


@triton.jit
def _state_scalars(w1, w2, z1, z2, g_w1n, g_w2n, g_z1n, g_z2n, i, ch, K, HD, V, out,
                   BK: tl.constexpr, BV: tl.constexpr, SUB: tl.constexpr, MOM: tl.constexpr):
    """Store the gradients of the update's scalars from this program's state tiles, SUB rows
    (W1 side) or columns (W2 side) at a time: ``<W1, gW1'> + <W2, gW2'>`` (the decay γ) and,
    with momentum, ``<Z, gW'>`` (e) and ``<Z, gZ'>`` (the momentum factor), at ``out[0..2]``."""
    rs = tl.arange(0, SUB)
    s_gam, s_e, s_m = 0.0, 0.0, 0.0
    for k0 in range(0, BK, SUB):
        p, m = _w1_tile(i, k0 + rs, ch, K, HD)  # [SUB, BH]
        a, b, c = _tile_scalars(w1, z1, g_w1n, g_z1n, p, m, MOM)
        s_gam, s_e, s_m = s_gam + a, s_e + b, s_m + c
    for v0 in range(0, BV, SUB):
        p, m = _w2_tile(i, ch, v0 + rs, HD, V)  # [BH, SUB]
        a, b, c = _tile_scalars(w2, z2, g_w2n, g_z2n, p, m, MOM)
        s_gam, s_e, s_m = s_gam + a, s_e + b, s_m + c
    tl.store(out, s_gam)
    if MOM:
        tl.store(out + 1, s_e)
        tl.store(out + 2, s_m)


@triton.jit
def _readout_grad(x_w, x_z, p, m, X, DO, G, E, i, rc, mc, r_in, m_in, r_out, m_out, C, D_IN,
                  D_OUT, MOM: tl.constexpr, FOLD: tl.constexpr, PREC: tl.constexpr):
    """The gradients one tile (rows ``r_in``, columns ``r_out``) of a chunk-start weight and of
    its momentum get from the read-out (zeros for the momentum without MOM). ``FOLD=0``: loaded
    from the state-shaped tensors ``x_w, x_z`` at ``p``. ``FOLD=1``: formed here from the
    read-out's factors of this chunk, ``(γ ⊙ X)^T dO`` and ``(e ⊙ X)^T dO`` with ``X [C, D_IN]``
    the layer's query inputs, ``dO [C, D_OUT]`` its output's gradient and ``γ, e [C]`` the
    per-row scales (``G``, ``E``): no state-sized tensor is written or read."""
    if FOLD:
        xT = tl.load(X + i * C * D_IN + rc[None, :] * D_IN + r_in[:, None],
                     mask=m_in[:, None] & mc[None, :], other=0.0)  # [B_in, BC]
        do = tl.load(DO + i * C * D_OUT + rc[:, None] * D_OUT + r_out[None, :],
                     mask=mc[:, None] & m_out[None, :], other=0.0)  # [BC, B_out]
        g = tl.load(G + i * C + rc, mask=mc, other=0.0)  # [BC]
        xw = tl.dot(xT, do * g[:, None], input_precision=PREC)  # [B_in, B_out]
        xz = xw * 0.0
        if MOM:
            ev = tl.load(E + i * C + rc, mask=mc, other=0.0)
            xz = tl.dot(xT, do * ev[:, None], input_precision=PREC)
    else:
        xw = tl.load(x_w + p, mask=m, other=0.0)
        xz = xw * 0.0
        if MOM:
            xz = tl.load(x_z + p, mask=m, other=0.0)
    return xw, xz


# LATER: the buffers the later chunk's keys backward adds into (g_w1n, g_w2n, lk_part) or reads
# before this chunk overwrites them (ga_part, gh_part) are restored after each autotune trial
@autotune(["C", "K", "HD", "V", "BC", "BK", "BH", "BV", "SUB", "ACT", "MOM", "FOLD", "LATER", "PREC"],
          ((4, 3), (8, 3), (16, 1), (8, 1), (16, 2)),
          restore=["g_w1n", "g_w2n", "lk_part", "ga_part", "gh_part"])
@triton.jit
def _bwd_hidden_kernel(k, h_in, a_in, d1_in, dz, w1, w2, z1, z2, gam, e, mom, dl, zl,
                       g_a, g_d1, g_w1n, g_w2n, g_z1n, g_z2n, x_w1, x_w2, x_z1, x_z2,
                       f_x1, f_do1, f_x2, f_do2, f_g, f_e,
                       g_w1, g_w2, g_z1, g_z2, ga_part, gh_part, t_buf, gk_part, gdz_part,
                       gdl_part, gzl_part, scal_part, lk, lh, la, lw1, lw2, g_y0, lk_part,
                       C, K, HD, V,
                       BC: tl.constexpr, BK: tl.constexpr, BH: tl.constexpr, BV: tl.constexpr,
                       SUB: tl.constexpr, ACT: tl.constexpr, MOM: tl.constexpr,
                       FOLD: tl.constexpr, LATER: tl.constexpr, PREC: tl.constexpr):
    """Backward, hidden block j of (batch, head) i: the state update and d1 = act'(h) (dz W2^T).

    Writes the final dZ1, dZ2, the state-direct parts of dW1, dW2 (plus t^T dz), and the
    per-block partials of dk, ddz, d(coefficient rows) and of da, dh for the later kernels.
    The gradients the chunk-start state receives from the read-out are added: loaded from
    ``x_*`` (FOLD=0), or formed from the read-out's factors ``f_*`` (FOLD=1: layer 1's
    queries ``f_x1 [C, K]`` and output gradient ``f_do1 [C, HD]``, layer 2's ``f_x2 [C, HD]``,
    ``f_do2 [C, V]``, the per-token scales ``f_g`` (γ), ``f_e`` (e); ``_readout_grad``).

    In phases, each one's tiles dead before the next loads its own: (1) the scalars of the
    state's direct terms, (2) the coefficient rows' and d1's gradients, (3) the dk and ddz
    partials, (4) the chunk-start state's gradients; and the key and value dimensions (K, V:
    contractions and outputs alike) SUB at a time, so no ``[C, K]``, ``[C, V]`` or
    ``[K, BH]`` tile is whole in registers (all at once, the sm_90 build spilled 5.4 KB of
    registers per thread; phases alone, 3.7 KB).

    With LATER, first the later chunk's keys backward (``_bwd_keys_block``: its keys ``lk``,
    activations ``lh, la``, start weights ``lw1, lw2``, ``g_y0`` from the bias kernel, its dk
    partials ``lk_part``): it completes that chunk's start-state gradient, which is this
    chunk's ``g_w1n, g_w2n``, in this program's own block (one launch per chunk fewer)."""
    i, j, rc, rk, rv, ch, mc, mk, mv, mh = _hidden_block(C, K, HD, V, BC, BK, BH, BV)
    if LATER:
        _bwd_keys_block(lk, lh, la, lw1, lw2, g_y0, ga_part, gh_part, g_w1n, g_w2n, lk_part, i, j,
                        rc, ch, mc, mh, C, K, HD, V, BK, BV, SUB, ACT, PREC)
        tl.debug_barrier()  # its stores are this chunk's loads (other threads of the program)
    nj = tl.num_programs(1)
    rs = tl.arange(0, SUB)
    off = i * C * HD + rc[:, None] * HD + ch[None, :]  # [BC, BH] rows of h, a, d1
    mch = mc[:, None] & mh[None, :]
    prt = i * nj + j  # this program's row of the per-block partials
    _state_scalars(w1, w2, z1, z2, g_w1n, g_w2n, g_z1n, g_z2n, i, ch, K, HD, V, scal_part + prt * 3,
                   BK, BV, SUB, MOM)
    # (2) outer products of the update: W1' += k^T diag(dl) d1, W2' += a^T diag(dl) dz (Z: zl);
    # their gradients need p = k gW1' and q = dz gW2'^T (and the same for Z), and d1's dz W2^T
    p1 = tl.zeros([BC, BH], dtype=tl.float32)
    q1 = tl.zeros([BC, BH], dtype=tl.float32)
    for k0 in range(0, BK, SUB):
        kk = k0 + rs
        ks = tl.load(k + i * C * K + rc[:, None] * K + kk[None, :], mask=mc[:, None] & (kk < K)[None, :], other=0.0)
        p, m = _w1_tile(i, kk, ch, K, HD)
        p1 += tl.dot(ks, tl.load(g_w1n + p, mask=m, other=0.0), input_precision=PREC)
        if MOM:
            q1 += tl.dot(ks, tl.load(g_z1n + p, mask=m, other=0.0), input_precision=PREC)
    p2 = tl.zeros([BC, BH], dtype=tl.float32)
    q2 = tl.zeros([BC, BH], dtype=tl.float32)
    mm = tl.zeros([BC, BH], dtype=tl.float32)  # dz W2^T
    for v0 in range(0, BV, SUB):
        vv = v0 + rs
        dzs = tl.load(dz + i * C * V + rc[:, None] * V + vv[None, :], mask=mc[:, None] & (vv < V)[None, :], other=0.0)
        pT = i * HD * V + ch[None, :] * V + vv[:, None]  # [SUB, BH], transposed W2 tiles
        mT = (vv < V)[:, None] & mh[None, :]
        p2 += tl.dot(dzs, tl.load(g_w2n + pT, mask=mT, other=0.0), input_precision=PREC)
        if MOM:
            q2 += tl.dot(dzs, tl.load(g_z2n + pT, mask=mT, other=0.0), input_precision=PREC)
        mm += tl.dot(dzs, tl.load(w2 + pT, mask=mT, other=0.0), input_precision=PREC)
    a = tl.load(a_in + off, mask=mch, other=0.0)
    d1 = tl.load(d1_in + off, mask=mch, other=0.0)
    dlv = tl.load(dl + i * C + rc, mask=mc, other=0.0)  # [BC]
    tl.store(gdl_part + prt * C + rc, tl.sum(d1 * p1, 1) + tl.sum(a * p2, 1), mask=mc)
    g1 = dlv[:, None] * p1 + tl.load(g_d1 + off, mask=mch, other=0.0)
    ga = dlv[:, None] * p2 + tl.load(g_a + off, mask=mch, other=0.0)
    zlv = dlv * 0.0
    if MOM:
        zlv = tl.load(zl + i * C + rc, mask=mc, other=0.0)
        tl.store(gzl_part + prt * C + rc, tl.sum(d1 * q1, 1) + tl.sum(a * q2, 1), mask=mc)
        g1 += zlv[:, None] * q1
        ga += zlv[:, None] * q2
    # back through d1 = act'(h) * (dz W2^T)
    h = tl.load(h_in + off, mask=mch, other=0.0)
    tl.store(gh_part + off, g1 * mm * _act_grad2(h, ACT), mask=mch)
    tl.store(ga_part + off, ga, mask=mch)
    tl.store(t_buf + off, g1 * _act_grad(h, ACT), mask=mch)
    tl.debug_barrier()
    # (3) dk's partial d1 diag(dl) gW1'^T (+ Z), ddz's a diag(dl) gW2' (+ Z) + t W2, t = g1 act'(h)
    # through memory
    d1l, d1z = d1 * dlv[:, None], d1 * zlv[:, None]
    for k0 in range(0, BK, SUB):
        kk = k0 + rs
        pT = i * K * HD + ch[:, None] + kk[None, :] * HD  # [BH, SUB], transposed W1 tiles
        mT = mh[:, None] & (kk < K)[None, :]
        gk = tl.dot(d1l, tl.load(g_w1n + pT, mask=mT, other=0.0), input_precision=PREC)
        if MOM:
            gk += tl.dot(d1z, tl.load(g_z1n + pT, mask=mT, other=0.0), input_precision=PREC)
        tl.store(gk_part + prt * C * K + rc[:, None] * K + kk[None, :], gk, mask=mc[:, None] & (kk < K)[None, :])
    t = tl.load(t_buf + off, mask=mch, other=0.0)
    al, az = a * dlv[:, None], a * zlv[:, None]
    for v0 in range(0, BV, SUB):
        vv = v0 + rs
        p, m = _w2_tile(i, ch, vv, HD, V)  # [BH, SUB]
        gdz = tl.dot(t, tl.load(w2 + p, mask=m, other=0.0), input_precision=PREC)
        gdz += tl.dot(al, tl.load(g_w2n + p, mask=m, other=0.0), input_precision=PREC)
        if MOM:
            gdz += tl.dot(az, tl.load(g_z2n + p, mask=m, other=0.0), input_precision=PREC)
        tl.store(gdz_part + prt * C * V + rc[:, None] * V + vv[None, :], gdz, mask=mc[:, None] & (vv < V)[None, :])
    # (4) the chunk-start state's gradients: decay and momentum of the next state's, t^T dz into
    # W2's, and the read-out's (loaded, or formed from its factors: _readout_grad)
    g = tl.load(gam + i)
    ev, mv_ = g * 0.0, g * 0.0
    if MOM:
        ev, mv_ = tl.load(e + i), tl.load(mom + i)
    for k0 in range(0, BK, SUB):
        kk = k0 + rs
        p, m = _w1_tile(i, kk, ch, K, HD)  # [SUB, BH]
        gw = tl.load(g_w1n + p, mask=m, other=0.0)
        xw, xz = _readout_grad(x_w1, x_z1, p, m, f_x1, f_do1, f_g, f_e, i, rc, mc, kk, kk < K, ch, mh,
                               C, K, HD, MOM, FOLD, PREC)
        tl.store(g_w1 + p, g * gw + xw, mask=m)
        if MOM:
            tl.store(g_z1 + p, ev * gw + mv_ * tl.load(g_z1n + p, mask=m, other=0.0) + xz, mask=m)
    tT = tl.load(t_buf + i * C * HD + rc[None, :] * HD + ch[:, None], mask=mh[:, None] & mc[None, :],
                 other=0.0)  # [BH, BC]
    for v0 in range(0, BV, SUB):
        vv = v0 + rs
        p, m = _w2_tile(i, ch, vv, HD, V)  # [BH, SUB]
        dzs = tl.load(dz + i * C * V + rc[:, None] * V + vv[None, :], mask=mc[:, None] & (vv < V)[None, :], other=0.0)
        gw = tl.load(g_w2n + p, mask=m, other=0.0)
        xw, xz = _readout_grad(x_w2, x_z2, p, m, f_x2, f_do2, f_g, f_e, i, rc, mc, ch, mh, vv, vv < V,
                               C, HD, V, MOM, FOLD, PREC)
        tl.store(g_w2 + p, g * gw + tl.dot(tT, dzs, input_precision=PREC) + xw, mask=m)
        if MOM:
            tl.store(g_z2 + p, ev * gw + mv_ * tl.load(g_z2n + p, mask=m, other=0.0) + xz, mask=m)


@triton.jit
def _bias_vjp(g_r, r0, n2, d, bp, m, g_d_ptr, row_ok, BIAS: tl.constexpr):
    """``J^T g_r`` for ``r = bias_grad(r0)`` (``_bias_grad``; J is symmetric), and for the huber
    bias the threshold's gradient, stored at ``g_d_ptr`` (rows ``row_ok``)."""
    if BIAS == L2:
        g = g_r
    elif BIAS == LP:  # elementwise: f'(r0) = (r0^2 + e)^(p/2 - 2) ((r0^2 + e) + (p - 2) r0^2)
        s = r0 * r0 + SMOOTH
        g = g_r * tl.exp((0.5 * bp - 2.0) * tl.log(s)) * (s + (bp - 2.0) * r0 * r0)
    elif BIAS == HUBER:  # beyond d: (d / |r0|) (I - r0 r0^T / |r0|^2), else I
        big = n2 > d * d
        norm = tl.sqrt(tl.where(big, n2, 1.0))
        proj = tl.sum(r0 * g_r, 1)  # [BC] r0 . g_r
        g = tl.where(big[:, None], (d / norm)[:, None] * (g_r - r0 * (proj / (norm * norm))[:, None]), g_r)
        tl.store(g_d_ptr, tl.where(big, proj / norm, 0.0), mask=row_ok)
    else:  # ROBUST: (1 + b / n) I - b r0 r0^T / n^3, n = sqrt(|r0|^2 + e)
        n = tl.sqrt(n2 + SMOOTH)
        proj = tl.sum(r0 * g_r, 1)
        g = (1.0 + bp / n)[:, None] * g_r - (bp * proj / (n * n * n))[:, None] * r0
    return tl.where(m, g, 0.0)


@autotune(["C", "V", "BV", "NORM", "RES", "BIAS"], BIAS_SHAPES)  # rows in blocks of BR
@triton.jit
def _bwd_bias_kernel(gdz_part, g_dz, y0_in, k, v, delta, g_y0, g_v, gk_res, g_delta, NJ, C, V,
                     eps, bp, BR: tl.constexpr, BV: tl.constexpr, NORM: tl.constexpr,
                     RES: tl.constexpr, BIAS: tl.constexpr):
    """Backward, (batch, head) i, rows of block r: from the gradient of dz back to y0
    (LayerNorm's backward differentiated once more, the bias gradient's Jacobian), and the
    gradients of v, of the huber threshold and of k through the residual."""
    i = tl.program_id(0).to(tl.int64)
    rc, rv = tl.program_id(1) * BR + tl.arange(0, BR), tl.arange(0, BV)
    m = (rc < C)[:, None] & (rv < V)[None, :]
    tile = rc[:, None] * V + rv[None, :]
    G = tl.load(g_dz + i * C * V + tile, mask=m, other=0.0)
    for j in range(0, NJ):
        G += tl.load(gdz_part + (i * NJ + j) * C * V + tile, mask=m, other=0.0)
    y0 = tl.load(y0_in + i * C * V + tile, mask=m, other=0.0)
    d = rc * 0.0  # [BR] the huber threshold of each row
    if BIAS == HUBER:
        d = tl.load(delta + i * C + rc, mask=rc < C, other=1.0)
    r, r0, n2, x_hat, rstd = _output_error(y0, m, k + i * C * V + tile, v + i * C * V + tile, d,
                                           bp, V, eps, NORM, RES, BIAS)
    if NORM:  # dz = _ln_grad(r): linear in r (a symmetric map), plus x_hat and rstd terms
        s = tl.sum(r * x_hat, 1) / V  # [BR]
        gx = tl.sum(G * x_hat, 1) / V
        g_r = _ln_grad(G, x_hat, rstd, m, V)
        g_rstd = tl.sum(G * _ln_grad(r, x_hat, rstd, m, V), 1) / rstd  # dz is rstd * (...)
        g_xhat = -rstd[:, None] * (G * s[:, None] + r * gx[:, None])
    else:
        g_r = G
    g_r = tl.where(m, g_r, 0.0)
    if BIAS == DOT:  # r = -v
        g_y = g_r * 0.0
        tl.store(g_v + i * C * V + tile, -g_r, mask=m)
    else:  # r = f(y - v)
        g_y = _bias_vjp(g_r, r0, n2, d, bp, m, g_delta + i * C + rc, rc < C, BIAS)
        tl.store(g_v + i * C * V + tile, -g_y, mask=m)
    if RES:
        tl.store(gk_res + i * C * V + tile, g_y, mask=m)
    if NORM:
        g = _ln_grad(tl.where(m, g_xhat + g_y, 0.0), x_hat, rstd, m, V)
        g -= (g_rstd * rstd * rstd / V)[:, None] * x_hat
    else:
        g = g_y
    tl.store(g_y0 + i * C * V + tile, g, mask=m)


@triton.jit
def _bwd_keys_block(k, h_in, a_in, w1, w2, g_y0, ga_part, gh_part, g_w1, g_w2, gk_part, i, j, rc,
                    ch, mc, mh, C, K, HD, V, BK: tl.constexpr, BV: tl.constexpr,
                    SUB: tl.constexpr, ACT: tl.constexpr, PREC: tl.constexpr):
    """Backward, hidden block j of (batch, head) i (the ranges and masks of ``_hidden_block``):
    through y0 = a W2, a = act(h), h = k W1; adds into dW1[:, j], dW2[j, :] and the block's dk
    partial. The value and key dimensions go SUB at a time (the contractions for da and dk, the
    rows of dW1 and columns of dW2), so no [C, V], [C, K] or [K, BH] tile is whole."""
    nj = tl.num_programs(1)
    rs = tl.arange(0, SUB)
    off = i * C * HD + rc[:, None] * HD + ch[None, :]
    mch = mc[:, None] & mh[None, :]
    ga = tl.load(ga_part + off, mask=mch, other=0.0)  # [BC, BH]
    aT = tl.load(a_in + i * C * HD + rc[None, :] * HD + ch[:, None], mask=mh[:, None] & mc[None, :], other=0.0)
    for v0 in range(0, BV, SUB):  # da += dy0 W2[j, vv]^T; dW2[j, vv] += a^T dy0
        vv = v0 + rs
        gy = tl.load(g_y0 + i * C * V + rc[:, None] * V + vv[None, :], mask=mc[:, None] & (vv < V)[None, :], other=0.0)
        w2T = tl.load(w2 + i * HD * V + ch[None, :] * V + vv[:, None], mask=(vv < V)[:, None] & mh[None, :], other=0.0)
        ga += tl.dot(gy, w2T, input_precision=PREC)
        p2, m2 = _w2_tile(i, ch, vv, HD, V)  # [BH, SUB]
        tl.store(g_w2 + p2, tl.load(g_w2 + p2, mask=m2, other=0.0) + tl.dot(aT, gy, input_precision=PREC), mask=m2)
    h = tl.load(h_in + off, mask=mch, other=0.0)
    gh = tl.load(gh_part + off, mask=mch, other=0.0) + ga * _act_grad(h, ACT)
    tl.store(gh_part + off, gh, mask=mch)
    tl.debug_barrier()
    gh = tl.load(gh_part + off, mask=mch, other=0.0)  # through memory: built from a dot result
    for k0 in range(0, BK, SUB):  # dW1[kk, j] += k[:, kk]^T dh; dk[:, kk] += dh W1[kk, j]^T
        kk = k0 + rs
        kT = tl.load(k + i * C * K + rc[None, :] * K + kk[:, None], mask=(kk < K)[:, None] & mc[None, :], other=0.0)
        p1, m1 = _w1_tile(i, kk, ch, K, HD)  # [SUB, BH]
        tl.store(g_w1 + p1, tl.load(g_w1 + p1, mask=m1, other=0.0) + tl.dot(kT, gh, input_precision=PREC), mask=m1)
        w1T = tl.load(w1 + i * K * HD + ch[:, None] + kk[None, :] * HD, mask=mh[:, None] & (kk < K)[None, :], other=0.0)
        pk = gk_part + (i * nj + j) * C * K + rc[:, None] * K + kk[None, :]
        mck = mc[:, None] & (kk < K)[None, :]
        tl.store(pk, tl.load(pk, mask=mck, other=0.0) + tl.dot(gh, w1T, input_precision=PREC), mask=mck)


@autotune(["C", "K", "HD", "V", "BC", "BK", "BH", "BV", "SUB", "ACT", "PREC"], ((4, 3), (8, 3)),
          restore=["g_w1", "g_w2", "gk_part", "gh_part"])
@triton.jit
def _bwd_keys_kernel(k, h_in, a_in, w1, w2, g_y0, ga_part, gh_part, g_w1, g_w2, gk_part,
                     C, K, HD, V,
                     BC: tl.constexpr, BK: tl.constexpr, BH: tl.constexpr, BV: tl.constexpr,
                     SUB: tl.constexpr, ACT: tl.constexpr, PREC: tl.constexpr):
    """Backward, hidden block j of (batch, head) i: through y0 = a W2, a = act(h), h = k W1
    (the first chunk's; later chunks' run in ``_bwd_hidden_kernel`` of the chunk before, LATER)."""
    i, j, rc, rk, rv, ch, mc, mk, mv, mh = _hidden_block(C, K, HD, V, BC, BK, BH, BV)
    _bwd_keys_block(k, h_in, a_in, w1, w2, g_y0, ga_part, gh_part, g_w1, g_w2, gk_part, i, j, rc,
                    ch, mc, mh, C, K, HD, V, BK, BV, SUB, ACT, PREC)


settle(globals())  # Triton cache keys formed at import, whatever kernel runs first (jit_keys.py)
