"""Chunk-step kernels of a depth-1 (linear) memory ``y = k W`` (TTT-linear and its relatives).

The fused loop of ``step.py`` runs them in place of the hidden-block kernels when the memory has
one layer; the bias kernels (LayerNorm, residual, the attentional bias and their backward) are
shared with depth 2. Per chunk, with ``W, Z [K, V]`` the state and momentum at the chunk start,
``dl, zl [C]`` the chunk-end coefficient rows and ``dz`` the output error from the bias kernel:

    forward:   y0 = k W;   W' = γ W + e Z + kᵀ diag(dl) dz;   Z' = m Z + kᵀ diag(zl) dz
    backward:  with P = ∂L/∂W', Q = ∂L/∂Z' and the read-out's share X_W, X_Z of ∂L/∂(W, Z):
               ∂W = γ P + X_W + kᵀ ∂y0,   ∂Z = e P + m Q + X_Z,
               ∂γ = <W, P>, ∂e = <Z, P>, ∂m = <Z, Q>,
               ∂dl_c = (k P)_c · dz_c,   ∂zl_c = (k Q)_c · dz_c,
               ∂dz ∋ diag(dl) k P + diag(zl) k Q,   ∂k ∋ diag(dl) dz Pᵀ + diag(zl) dz Qᵀ + ∂y0 Wᵀ.

One program per (batch, head) for the backward (it loops over value blocks), per (batch, head)
and value block for the forward update. Every ``tl.dot`` operand is loaded (transposed ones
loaded transposed) or a loaded tile scaled by a per-row vector.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._step_bwd import _readout_grad
from ..jit_keys import settle


@triton.jit
def _linear_keys_kernel(k, w, y_part, C, K, V, BC: tl.constexpr, BK: tl.constexpr,
                        BV: tl.constexpr, PREC: tl.constexpr):
    """(batch·head) i: ``y0 = k W`` into ``y_part [N, 1, C, V]`` (the bias kernel's input)."""
    i = tl.program_id(0).to(tl.int64)
    rc, rk, rv = tl.arange(0, BC), tl.arange(0, BK), tl.arange(0, BV)
    mc, mk, mv = rc < C, rk < K, rv < V
    kt = tl.load(k + i * C * K + rc[:, None] * K + rk[None, :], mask=mc[:, None] & mk[None, :], other=0.0)
    wt = tl.load(w + i * K * V + rk[:, None] * V + rv[None, :], mask=mk[:, None] & mv[None, :], other=0.0)
    y = tl.dot(kt, wt, input_precision=PREC)  # [BC, BV]
    tl.store(y_part + i * C * V + rc[:, None] * V + rv[None, :], y, mask=mc[:, None] & mv[None, :])


@triton.jit
def _linear_update_kernel(k, dz, w, z, gam, e, mom, dl, zl, wn, zn, C, K, V,
                          BC: tl.constexpr, BK: tl.constexpr, BVU: tl.constexpr,
                          MOM: tl.constexpr, PREC: tl.constexpr):
    """(batch·head i, value block j): the chunk-end ``W'[:, j]`` (and ``Z'[:, j]``)."""
    i, j = tl.program_id(0).to(tl.int64), tl.program_id(1)
    rc, rk, cv = tl.arange(0, BC), tl.arange(0, BK), j * BVU + tl.arange(0, BVU)
    mc, mk, mv = rc < C, rk < K, cv < V
    kT = tl.load(k + i * C * K + rc[None, :] * K + rk[:, None], mask=mk[:, None] & mc[None, :], other=0.0)
    dzt = tl.load(dz + i * C * V + rc[:, None] * V + cv[None, :], mask=mc[:, None] & mv[None, :], other=0.0)
    dlv = tl.load(dl + i * C + rc, mask=mc, other=0.0)  # [BC]
    p = i * K * V + rk[:, None] * V + cv[None, :]  # [BK, BVU] tile of W, Z
    m = mk[:, None] & mv[None, :]
    new = tl.load(gam + i) * tl.load(w + p, mask=m, other=0.0)
    new += tl.dot(kT, dzt * dlv[:, None], input_precision=PREC)
    if MOM:
        zt = tl.load(z + p, mask=m, other=0.0)
        zlv = tl.load(zl + i * C + rc, mask=mc, other=0.0)
        new += tl.load(e + i) * zt
        tl.store(zn + p, tl.load(mom + i) * zt + tl.dot(kT, dzt * zlv[:, None], input_precision=PREC), mask=m)
    tl.store(wn + p, new, mask=m)


@triton.jit
def _linear_bwd_update_kernel(k, dz, w, z, gam, e, mom, dl, zl, g_wn, g_zn, x_w, x_z,
                              f_x, f_do, f_g, f_e,
                              g_w, g_z, gk_part, gdz_part, gdl_part, gzl_part, scal_part, C, K, V,
                              BC: tl.constexpr, BK: tl.constexpr, BVU: tl.constexpr,
                              MOM: tl.constexpr, FOLD: tl.constexpr, PREC: tl.constexpr):
    """(batch·head) i: back through the state update (module docstring), value block by value
    block. Writes ∂W (before the keys' term), ∂Z, and the partials (one block: NJ = 1) of ∂k,
    ∂dz, ∂dl, ∂zl and ∂(γ, e, m) that the shared code sums. The read-out's gradient on the
    chunk-start state is loaded from ``x_w, x_z`` (FOLD=0) or formed from its factors
    (FOLD=1: queries ``f_x [C, K]``, output gradient ``f_do [C, V]``, scales ``f_g, f_e``)."""
    i = tl.program_id(0).to(tl.int64)
    rc, rk = tl.arange(0, BC), tl.arange(0, BK)
    mc, mk = rc < C, rk < K
    kt = tl.load(k + i * C * K + rc[:, None] * K + rk[None, :], mask=mc[:, None] & mk[None, :], other=0.0)
    dlv = tl.load(dl + i * C + rc, mask=mc, other=0.0)
    zlv = dlv * 0.0
    if MOM:
        zlv = tl.load(zl + i * C + rc, mask=mc, other=0.0)
    g, ev, mv_ = tl.load(gam + i), tl.load(e + i), tl.load(mom + i)
    gk = tl.zeros([BC, BK], dtype=tl.float32)
    gdl = tl.zeros([BC], dtype=tl.float32)
    gzl = tl.zeros([BC], dtype=tl.float32)
    s_gam, s_e, s_m = 0.0, 0.0, 0.0
    for v0 in range(0, V, BVU):
        cv = v0 + tl.arange(0, BVU)
        mv = cv < V
        p = i * K * V + rk[:, None] * V + cv[None, :]  # [BK, BVU]
        pT = i * K * V + rk[None, :] * V + cv[:, None]  # [BVU, BK]
        m, mT = mk[:, None] & mv[None, :], mv[:, None] & mk[None, :]
        dzt = tl.load(dz + i * C * V + rc[:, None] * V + cv[None, :], mask=mc[:, None] & mv[None, :], other=0.0)
        P = tl.load(g_wn + p, mask=m, other=0.0)
        kP = tl.dot(kt, P, input_precision=PREC)  # [BC, BVU]
        gdl += tl.sum(kP * dzt, 1)
        gdz = dlv[:, None] * kP
        gk += tl.dot(dzt * dlv[:, None], tl.load(g_wn + pT, mask=mT, other=0.0), input_precision=PREC)
        wt = tl.load(w + p, mask=m, other=0.0)
        s_gam += tl.sum(tl.sum(wt * P, 1), 0)
        xw, xz = _readout_grad(x_w, x_z, p, m, f_x, f_do, f_g, f_e, i, rc, mc, rk, mk, cv, mv, C, K,
                               V, MOM, FOLD, PREC)
        tl.store(g_w + p, g * P + xw, mask=m)
        if MOM:
            Q = tl.load(g_zn + p, mask=m, other=0.0)
            kQ = tl.dot(kt, Q, input_precision=PREC)
            gzl += tl.sum(kQ * dzt, 1)
            gdz += zlv[:, None] * kQ
            gk += tl.dot(dzt * zlv[:, None], tl.load(g_zn + pT, mask=mT, other=0.0), input_precision=PREC)
            zt = tl.load(z + p, mask=m, other=0.0)
            s_e += tl.sum(tl.sum(zt * P, 1), 0)
            s_m += tl.sum(tl.sum(zt * Q, 1), 0)
            tl.store(g_z + p, ev * P + mv_ * Q + xz, mask=m)
        tl.store(gdz_part + i * C * V + rc[:, None] * V + cv[None, :], gdz, mask=mc[:, None] & mv[None, :])
    tl.store(gk_part + i * C * K + rc[:, None] * K + rk[None, :], gk, mask=mc[:, None] & mk[None, :])
    tl.store(gdl_part + i * C + rc, gdl, mask=mc)
    tl.store(gzl_part + i * C + rc, gzl, mask=mc)
    tl.store(scal_part + i * 3, s_gam)
    tl.store(scal_part + i * 3 + 1, s_e)
    tl.store(scal_part + i * 3 + 2, s_m)


@triton.jit
def _linear_bwd_keys_kernel(k, w, g_y0, g_w, gk_part, gk_res, g_k, C, K, V, BC: tl.constexpr,
                            BK: tl.constexpr, BVU: tl.constexpr, RES: tl.constexpr,
                            PREC: tl.constexpr):
    """(batch·head) i: back through ``y0 = k W``: ``∂W += kᵀ ∂y0``, and the whole ``∂k`` (the
    update's share in ``gk_part``, ``∂y0 Wᵀ``, the residual's share ``gk_res`` with RES) into
    ``g_k``."""
    i = tl.program_id(0).to(tl.int64)
    rc, rk = tl.arange(0, BC), tl.arange(0, BK)
    mc, mk = rc < C, rk < K
    kT = tl.load(k + i * C * K + rc[None, :] * K + rk[:, None], mask=mk[:, None] & mc[None, :], other=0.0)
    tile = i * C * K + rc[:, None] * K + rk[None, :]
    mck = mc[:, None] & mk[None, :]
    gk = tl.load(gk_part + tile, mask=mck, other=0.0)
    if RES:
        gk += tl.load(gk_res + tile, mask=mck, other=0.0)
    for v0 in range(0, V, BVU):
        cv = v0 + tl.arange(0, BVU)
        mv = cv < V
        gy = tl.load(g_y0 + i * C * V + rc[:, None] * V + cv[None, :], mask=mc[:, None] & mv[None, :], other=0.0)
        wT = tl.load(w + i * K * V + rk[None, :] * V + cv[:, None], mask=mv[:, None] & mk[None, :], other=0.0)
        gk += tl.dot(gy, wT, input_precision=PREC)  # [BC, BK]
        p = i * K * V + rk[:, None] * V + cv[None, :]
        m = mk[:, None] & mv[None, :]
        tl.store(g_w + p, tl.load(g_w + p, mask=m, other=0.0) + tl.dot(kT, gy, input_precision=PREC), mask=m)
    tl.store(g_k + tile, gk, mask=mck)


settle(globals())  # Triton cache keys formed at import, whatever kernel runs first (jit_keys.py)
