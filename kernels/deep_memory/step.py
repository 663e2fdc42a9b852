"""One chunk step of a depth-2 deep memory in three Triton kernels (forward only, no autograd).

The step is phase 1 of ``chunk_torch._dual_form`` for one chunk of every (batch, head) at once:
the keys go forward through the MLP at the chunk's starting weights, the attentional bias is
back-propagated by hand (``key_gradients``), and the state moves to the chunk's end
(``_advance_chunk``). In PyTorch that is about forty kernels per chunk; here it is three:

1. ``_keys_kernel``, grid (N, hidden blocks): ``h = k W1[:, j]``, ``a = act(h)``; stores ``h``
   and ``a`` and this block's share ``a W2[j, :]`` of the output ``y0``;
2. ``_bias_kernel``, grid (N,): ``y0`` = the sum of the shares, LayerNorm, residual, the bias
   gradient ``r`` and its LayerNorm backward ``dz``;
3. ``_update_kernel``, grid (N, hidden blocks): ``d1 = act'(h) * (dz W2[j, :]^T)`` and the new
   ``W1[:, j], W2[j, :]`` (and momenta) with the decayed outer-product sums of the chunk.

Every ``tl.dot`` operand comes from a load (values computed from a dot go through memory, with a
barrier): Triton 3.4-3.7.0 miscompiles some dot-of-dot patterns on Hopper (fla issue #640).
Transposed operands are loaded transposed. Used by ``triton_deep_memory`` when no gradient is
needed (inference, prefill); training still takes the PyTorch step, whose autograd backward
this module does not provide yet.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from .config import DeepMemoryConfig
from .memory import NORM_EPS, DeepMemoryState

_ACT = {"identity": 0, "gelu": 1, "silu": 2, "relu": 3}


def fused_step_supported(cfg: DeepMemoryConfig, dtype: torch.dtype) -> bool:
    """Depth-2 memories with linear retention and an l2 or dot bias, computed in float32."""
    return (cfg.depth == 2 and cfg.linear_retention and cfg.bias in ("l2", "dot")
            and cfg.activation in _ACT and dtype == torch.float32)


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
def _keys_kernel(k, w1, w2, h_out, a_out, y_part, C, K, HD, V,
                 BC: tl.constexpr, BK: tl.constexpr, BH: tl.constexpr, BV: tl.constexpr,
                 ACT: tl.constexpr, PREC: tl.constexpr):
    """Hidden block j of (batch, head) i: h, a = act(h), and the share a W2[j, :] of y0."""
    i, j = tl.program_id(0).to(tl.int64), tl.program_id(1)
    nj = tl.num_programs(1)
    rc, rk, rv = tl.arange(0, BC), tl.arange(0, BK), tl.arange(0, BV)
    ch = j * BH + tl.arange(0, BH)
    mc, mk, mv, mh = rc < C, rk < K, rv < V, ch < HD
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


@triton.jit
def _bias_kernel(y_part, k, v, y0_out, dz_out, NJ, C, V, eps,
                 BC: tl.constexpr, BV: tl.constexpr, NORM: tl.constexpr, RES: tl.constexpr,
                 L2: tl.constexpr):
    """(batch, head) i: y0 from the shares, the output, the bias gradient and dz."""
    i = tl.program_id(0).to(tl.int64)
    rc, rv = tl.arange(0, BC), tl.arange(0, BV)
    m = (rc < C)[:, None] & (rv < V)[None, :]
    tile = rc[:, None] * V + rv[None, :]
    y0 = tl.zeros([BC, BV], dtype=tl.float32)
    for j in range(0, NJ):
        y0 += tl.load(y_part + (i * NJ + j) * C * V + tile, mask=m, other=0.0)
    tl.store(y0_out + i * C * V + tile, y0, mask=m)  # kept for the backward
    y = y0
    if NORM:
        mean = tl.sum(y0, 1) / V
        xc = tl.where(m, y0 - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 1) / V + eps)
        y = xc * rstd[:, None]
    if RES:
        y += tl.load(k + i * C * V + tile, mask=m, other=0.0)  # residual needs K == V
    vt = tl.load(v + i * C * V + tile, mask=m, other=0.0)
    if L2:
        r = y - vt
    else:
        r = -vt
    r = tl.where(m, r, 0.0)
    if NORM:  # back through LayerNorm: rstd (r - mean(r) - x_hat mean(r x_hat))
        x_hat = xc * rstd[:, None]
        r = rstd[:, None] * (r - (tl.sum(r, 1) / V)[:, None] - x_hat * (tl.sum(r * x_hat, 1) / V)[:, None])
        r = tl.where(m, r, 0.0)
    tl.store(dz_out + i * C * V + tile, r, mask=m)


@triton.jit
def _update_kernel(k, h_in, a_in, dz, w1, w2, z1, z2, gam, e, mom, dl, zl,
                   d1_out, w1n, w2n, z1n, z2n, C, K, HD, V,
                   BC: tl.constexpr, BK: tl.constexpr, BH: tl.constexpr, BV: tl.constexpr,
                   ACT: tl.constexpr, MOM: tl.constexpr, PREC: tl.constexpr):
    """Hidden block j of (batch, head) i: d1 and the chunk-end W1[:, j], W2[j, :] (and Z)."""
    i, j = tl.program_id(0).to(tl.int64), tl.program_id(1)
    rc, rk, rv = tl.arange(0, BC), tl.arange(0, BK), tl.arange(0, BV)
    ch = j * BH + tl.arange(0, BH)
    mc, mk, mv, mh = rc < C, rk < K, rv < V, ch < HD
    dzt = tl.load(dz + i * C * V + rc[:, None] * V + rv[None, :], mask=mc[:, None] & mv[None, :], other=0.0)
    w2T = tl.load(w2 + i * HD * V + ch[None, :] * V + rv[:, None], mask=mv[:, None] & mh[None, :], other=0.0)
    off = i * C * HD + rc[:, None] * HD + ch[None, :]
    ch_mask = mc[:, None] & mh[None, :]
    h = tl.load(h_in + off, mask=ch_mask, other=0.0)
    d1 = tl.dot(dzt, w2T, input_precision=PREC) * _act_grad(h, ACT)  # [BC, BH]
    tl.store(d1_out + off, d1, mask=ch_mask)
    tl.debug_barrier()
    d1 = tl.load(d1_out + off, mask=ch_mask, other=0.0)  # through memory: a dot's result
    dlv = tl.load(dl + i * C + rc, mask=mc, other=0.0)  # [BC] row `last` of the step weights
    kT = tl.load(k + i * C * K + rc[None, :] * K + rk[:, None], mask=mk[:, None] & mc[None, :], other=0.0)
    aT = tl.load(a_in + i * C * HD + rc[None, :] * HD + ch[:, None], mask=mh[:, None] & mc[None, :], other=0.0)
    g = tl.load(gam + i)
    p1 = i * K * HD + rk[:, None] * HD + ch[None, :]  # W1[:, j] tile [BK, BH]
    m1 = mk[:, None] & mh[None, :]
    p2 = i * HD * V + ch[:, None] * V + rv[None, :]  # W2[j, :] tile [BH, BV]
    m2 = mh[:, None] & mv[None, :]
    new1 = g * tl.load(w1 + p1, mask=m1, other=0.0) + tl.dot(kT, d1 * dlv[:, None], input_precision=PREC)
    new2 = g * tl.load(w2 + p2, mask=m2, other=0.0) + tl.dot(aT, dzt * dlv[:, None], input_precision=PREC)
    if MOM:
        ev, mv_ = tl.load(e + i), tl.load(mom + i)
        zlv = tl.load(zl + i * C + rc, mask=mc, other=0.0)
        z1t = tl.load(z1 + p1, mask=m1, other=0.0)
        z2t = tl.load(z2 + p2, mask=m2, other=0.0)
        new1 += ev * z1t
        new2 += ev * z2t
        tl.store(z1n + p1, mv_ * z1t + tl.dot(kT, d1 * zlv[:, None], input_precision=PREC), mask=m1)
        tl.store(z2n + p2, mv_ * z2t + tl.dot(aT, dzt * zlv[:, None], input_precision=PREC), mask=m2)
    tl.store(w1n + p1, new1, mask=m1)
    tl.store(w2n + p2, new2, mask=m2)


@triton.jit
def _bwd_hidden_kernel(k, h_in, a_in, d1_in, dz, w1, w2, z1, z2, gam, e, mom, dl, zl,
                       g_a, g_d1, g_w1n, g_w2n, g_z1n, g_z2n,
                       g_w1, g_w2, g_z1, g_z2, ga_part, gh_part, t_buf, gk_part, gdz_part,
                       gdl_part, gzl_part, scal_part, C, K, HD, V,
                       BC: tl.constexpr, BK: tl.constexpr, BH: tl.constexpr, BV: tl.constexpr,
                       ACT: tl.constexpr, MOM: tl.constexpr, PREC: tl.constexpr):
    """Backward, hidden block j of (batch, head) i: the state update and d1 = act'(h) (dz W2^T).

    Writes the final dZ1, dZ2, the state-direct parts of dW1, dW2 (plus t^T dz), and the
    per-block partials of dk, ddz, d(coefficient rows) and of da, dh for the later kernels."""
    i, j = tl.program_id(0).to(tl.int64), tl.program_id(1)
    nj = tl.num_programs(1)
    rc, rk, rv = tl.arange(0, BC), tl.arange(0, BK), tl.arange(0, BV)
    ch = j * BH + tl.arange(0, BH)
    mc, mk, mv, mh = rc < C, rk < K, rv < V, ch < HD
    m1, m2 = mk[:, None] & mh[None, :], mh[:, None] & mv[None, :]
    m1T, m2T = mh[:, None] & mk[None, :], mv[:, None] & mh[None, :]
    p1 = i * K * HD + rk[:, None] * HD + ch[None, :]  # [BK, BH] tiles of W1, Z1 and their grads
    p1T = i * K * HD + ch[:, None] + rk[None, :] * HD  # the same, transposed [BH, BK]
    p2 = i * HD * V + ch[:, None] * V + rv[None, :]  # [BH, BV] tiles of W2, Z2
    p2T = i * HD * V + ch[None, :] * V + rv[:, None]  # transposed [BV, BH]
    off = i * C * HD + rc[:, None] * HD + ch[None, :]  # [BC, BH] rows of h, a, d1
    mch = mc[:, None] & mh[None, :]
    kt = tl.load(k + i * C * K + rc[:, None] * K + rk[None, :], mask=mc[:, None] & mk[None, :], other=0.0)
    dzt = tl.load(dz + i * C * V + rc[:, None] * V + rv[None, :], mask=mc[:, None] & mv[None, :], other=0.0)
    h = tl.load(h_in + off, mask=mch, other=0.0)
    a = tl.load(a_in + off, mask=mch, other=0.0)
    d1 = tl.load(d1_in + off, mask=mch, other=0.0)
    dlv = tl.load(dl + i * C + rc, mask=mc, other=0.0)
    g = tl.load(gam + i)
    gw1n = tl.load(g_w1n + p1, mask=m1, other=0.0)
    gw2n = tl.load(g_w2n + p2, mask=m2, other=0.0)
    s_gam = tl.sum(tl.sum(tl.load(w1 + p1, mask=m1, other=0.0) * gw1n, 1), 0)
    s_gam += tl.sum(tl.sum(tl.load(w2 + p2, mask=m2, other=0.0) * gw2n, 1), 0)
    tl.store(g_w1 + p1, g * gw1n, mask=m1)
    gw2_acc = g * gw2n
    # outer products of the update: W1' += k^T diag(dl) d1, W2' += a^T diag(dl) dz
    p_1 = tl.dot(kt, gw1n, input_precision=PREC)  # [BC, BH] = k gW1'
    p_2 = tl.dot(dzt, tl.load(g_w2n + p2T, mask=m2T, other=0.0), input_precision=PREC)  # dz gW2'^T
    gdl = tl.sum(d1 * p_1, 1) + tl.sum(a * p_2, 1)  # [BC]
    g1 = tl.load(g_d1 + off, mask=mch, other=0.0) + dlv[:, None] * p_1
    ga = tl.load(g_a + off, mask=mch, other=0.0) + dlv[:, None] * p_2
    gk = tl.dot(d1 * dlv[:, None], tl.load(g_w1n + p1T, mask=m1T, other=0.0), input_precision=PREC)
    gdz = tl.dot(a * dlv[:, None], gw2n, input_precision=PREC)  # [BC, BV]
    if MOM:
        ev, mv_ = tl.load(e + i), tl.load(mom + i)
        zlv = tl.load(zl + i * C + rc, mask=mc, other=0.0)
        gz1n = tl.load(g_z1n + p1, mask=m1, other=0.0)
        gz2n = tl.load(g_z2n + p2, mask=m2, other=0.0)
        z1t = tl.load(z1 + p1, mask=m1, other=0.0)
        z2t = tl.load(z2 + p2, mask=m2, other=0.0)
        tl.store(g_z1 + p1, ev * gw1n + mv_ * gz1n, mask=m1)
        tl.store(g_z2 + p2, ev * gw2n + mv_ * gz2n, mask=m2)
        s_e = tl.sum(tl.sum(z1t * gw1n, 1), 0) + tl.sum(tl.sum(z2t * gw2n, 1), 0)
        s_mom = tl.sum(tl.sum(z1t * gz1n, 1), 0) + tl.sum(tl.sum(z2t * gz2n, 1), 0)
        tl.store(scal_part + (i * nj + j) * 3 + 1, s_e)
        tl.store(scal_part + (i * nj + j) * 3 + 2, s_mom)
        q_1 = tl.dot(kt, gz1n, input_precision=PREC)
        q_2 = tl.dot(dzt, tl.load(g_z2n + p2T, mask=m2T, other=0.0), input_precision=PREC)
        tl.store(gzl_part + (i * nj + j) * C + rc, tl.sum(d1 * q_1, 1) + tl.sum(a * q_2, 1), mask=mc)
        g1 += zlv[:, None] * q_1
        ga += zlv[:, None] * q_2
        gk += tl.dot(d1 * zlv[:, None], tl.load(g_z1n + p1T, mask=m1T, other=0.0), input_precision=PREC)
        gdz += tl.dot(a * zlv[:, None], gz2n, input_precision=PREC)
    tl.store(scal_part + (i * nj + j) * 3, s_gam)
    tl.store(gdl_part + (i * nj + j) * C + rc, gdl, mask=mc)
    # back through d1 = act'(h) * (dz W2^T)
    w2T = tl.load(w2 + p2T, mask=m2T, other=0.0)  # [BV, BH]
    mm = tl.dot(dzt, w2T, input_precision=PREC)  # [BC, BH] = dz W2^T
    tl.store(gh_part + off, g1 * mm * _act_grad2(h, ACT), mask=mch)
    tl.store(ga_part + off, ga, mask=mch)
    tl.store(t_buf + off, g1 * _act_grad(h, ACT), mask=mch)
    tl.debug_barrier()
    t = tl.load(t_buf + off, mask=mch, other=0.0)  # through memory: built from dot results
    tT = tl.load(t_buf + i * C * HD + rc[None, :] * HD + ch[:, None], mask=mh[:, None] & mc[None, :],
                 other=0.0)  # [BH, BC]
    gdz += tl.dot(t, tl.load(w2 + p2, mask=m2, other=0.0), input_precision=PREC)
    gw2_acc += tl.dot(tT, dzt, input_precision=PREC)
    tl.store(g_w2 + p2, gw2_acc, mask=m2)
    tl.store(gk_part + (i * nj + j) * C * K + rc[:, None] * K + rk[None, :], gk,
             mask=mc[:, None] & mk[None, :])
    tl.store(gdz_part + (i * nj + j) * C * V + rc[:, None] * V + rv[None, :], gdz,
             mask=mc[:, None] & mv[None, :])


@triton.jit
def _bwd_bias_kernel(gdz_part, g_dz, y0_in, k, v, g_y0, g_v, gk_res, NJ, C, V, eps,
                     BC: tl.constexpr, BV: tl.constexpr, NORM: tl.constexpr, RES: tl.constexpr,
                     L2: tl.constexpr):
    """Backward, (batch, head) i: from the gradient of dz back to y0 (LayerNorm's backward
    differentiated once more), and the gradients of v and of k through the residual."""
    i = tl.program_id(0).to(tl.int64)
    rc, rv = tl.arange(0, BC), tl.arange(0, BV)
    m = (rc < C)[:, None] & (rv < V)[None, :]
    tile = rc[:, None] * V + rv[None, :]
    G = tl.load(g_dz + i * C * V + tile, mask=m, other=0.0)
    for j in range(0, NJ):
        G += tl.load(gdz_part + (i * NJ + j) * C * V + tile, mask=m, other=0.0)
    y0 = tl.load(y0_in + i * C * V + tile, mask=m, other=0.0)
    y = y0
    if NORM:
        mean = tl.sum(y0, 1) / V
        xc = tl.where(m, y0 - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 1) / V + eps)
        x_hat = xc * rstd[:, None]
        y = x_hat
    if RES:
        y += tl.load(k + i * C * V + tile, mask=m, other=0.0)
    vt = tl.load(v + i * C * V + tile, mask=m, other=0.0)
    if L2:
        r = tl.where(m, y - vt, 0.0)
    else:
        r = tl.where(m, -vt, 0.0)
    if NORM:
        s = tl.sum(r * x_hat, 1) / V  # [BC]
        gx = tl.sum(G * x_hat, 1) / V
        g_r = rstd[:, None] * (G - (tl.sum(G, 1) / V)[:, None] - x_hat * gx[:, None])
        dz_over_rstd = r - (tl.sum(r, 1) / V)[:, None] - x_hat * s[:, None]
        g_rstd = tl.sum(G * dz_over_rstd, 1)  # [BC]
        g_xhat = -rstd[:, None] * (G * s[:, None] + r * gx[:, None])
    else:
        g_r = G
    g_r = tl.where(m, g_r, 0.0)
    tl.store(g_v + i * C * V + tile, -g_r, mask=m)
    if L2:
        g_y = g_r
    else:
        g_y = g_r * 0.0
    if RES:
        tl.store(gk_res + i * C * V + tile, g_y, mask=m)
    if NORM:
        g_xhat = tl.where(m, g_xhat + g_y, 0.0)
        gxx = tl.sum(g_xhat * x_hat, 1) / V
        g = rstd[:, None] * (g_xhat - (tl.sum(g_xhat, 1) / V)[:, None] - x_hat * gxx[:, None])
        g -= (g_rstd * rstd * rstd / V)[:, None] * x_hat
    else:
        g = g_y
    tl.store(g_y0 + i * C * V + tile, g, mask=m)


@triton.jit
def _bwd_keys_kernel(k, h_in, a_in, w1, w2, g_y0, ga_part, gh_part, g_w1, g_w2, gk_part,
                     C, K, HD, V,
                     BC: tl.constexpr, BK: tl.constexpr, BH: tl.constexpr, BV: tl.constexpr,
                     ACT: tl.constexpr, PREC: tl.constexpr):
    """Backward, hidden block j of (batch, head) i: through y0 = a W2, a = act(h), h = k W1."""
    i, j = tl.program_id(0).to(tl.int64), tl.program_id(1)
    nj = tl.num_programs(1)
    rc, rk, rv = tl.arange(0, BC), tl.arange(0, BK), tl.arange(0, BV)
    ch = j * BH + tl.arange(0, BH)
    mc, mk, mv, mh = rc < C, rk < K, rv < V, ch < HD
    off = i * C * HD + rc[:, None] * HD + ch[None, :]
    mch = mc[:, None] & mh[None, :]
    p1 = i * K * HD + rk[:, None] * HD + ch[None, :]
    m1 = mk[:, None] & mh[None, :]
    p2 = i * HD * V + ch[:, None] * V + rv[None, :]
    m2 = mh[:, None] & mv[None, :]
    gy = tl.load(g_y0 + i * C * V + rc[:, None] * V + rv[None, :], mask=mc[:, None] & mv[None, :], other=0.0)
    w2T = tl.load(w2 + i * HD * V + ch[None, :] * V + rv[:, None], mask=mv[:, None] & mh[None, :], other=0.0)
    ga = tl.load(ga_part + off, mask=mch, other=0.0) + tl.dot(gy, w2T, input_precision=PREC)
    aT = tl.load(a_in + i * C * HD + rc[None, :] * HD + ch[:, None], mask=mh[:, None] & mc[None, :], other=0.0)
    gw2 = tl.load(g_w2 + p2, mask=m2, other=0.0) + tl.dot(aT, gy, input_precision=PREC)
    tl.store(g_w2 + p2, gw2, mask=m2)
    h = tl.load(h_in + off, mask=mch, other=0.0)
    gh = tl.load(gh_part + off, mask=mch, other=0.0) + ga * _act_grad(h, ACT)
    tl.store(gh_part + off, gh, mask=mch)
    tl.debug_barrier()
    gh = tl.load(gh_part + off, mask=mch, other=0.0)  # through memory: built from a dot result
    kT = tl.load(k + i * C * K + rc[None, :] * K + rk[:, None], mask=mk[:, None] & mc[None, :], other=0.0)
    gw1 = tl.load(g_w1 + p1, mask=m1, other=0.0) + tl.dot(kT, gh, input_precision=PREC)
    tl.store(g_w1 + p1, gw1, mask=m1)
    w1T = tl.load(w1 + i * K * HD + ch[:, None] + rk[None, :] * HD, mask=mh[:, None] & mk[None, :], other=0.0)
    pk = gk_part + (i * nj + j) * C * K + rc[:, None] * K + rk[None, :]
    mck = mc[:, None] & mk[None, :]
    tl.store(pk, tl.load(pk, mask=mck, other=0.0) + tl.dot(gh, w1T, input_precision=PREC), mask=mck)


@dataclass(frozen=True)
class _Shape:
    """Sizes, tiles and flags of one chunk step (launch constants)."""

    N: int
    C: int
    K: int
    HD: int
    V: int
    NJ: int
    tiles: dict
    flags: dict  # ACT, NORM, RES, L2, MOM
    prec: str  # tl.dot input precision

    @property
    def hidden_grid(self) -> tuple[int, int]:
        return (self.N, self.NJ)


def _block(n: int, cap: int | None = None) -> int:
    b = max(16, triton.next_power_of_2(n))
    return min(b, cap) if cap else b


def _shape(k: Tensor, v: Tensor, w1: Tensor, cfg: DeepMemoryConfig, mom_on: bool, prec: str) -> _Shape:
    N, C, K = k.shape
    V, HD = v.shape[-1], w1.shape[-1]
    tiles = dict(BC=_block(C), BK=_block(K), BH=_block(HD, 64), BV=_block(V))
    flags = dict(ACT=_ACT[cfg.activation], NORM=cfg.norm, RES=cfg.residual, L2=cfg.bias == "l2",
                 MOM=mom_on)
    return _Shape(N, C, K, HD, V, triton.cdiv(HD, tiles["BH"]), tiles, flags, prec)


def _forward(k: Tensor, v: Tensor, w1: Tensor, w2: Tensor, z1: Tensor, z2: Tensor, gam: Tensor,
             e: Tensor, mom: Tensor, dl: Tensor, zl: Tensor, sh: _Shape) -> tuple[Tensor, ...]:
    """Flattened ``[N, ...]`` float32 tensors -> ``h, a, d1, dz, y0, w1', w2', z1', z2'``."""
    t, f = sh.tiles, sh.flags
    new = lambda *s: torch.empty(*s, device=k.device, dtype=k.dtype)  # noqa: E731
    h, a, d1 = new(sh.N, sh.C, sh.HD), new(sh.N, sh.C, sh.HD), new(sh.N, sh.C, sh.HD)
    y_part, y0, dz = new(sh.N, sh.NJ, sh.C, sh.V), new(sh.N, sh.C, sh.V), new(sh.N, sh.C, sh.V)
    _keys_kernel[sh.hidden_grid](k, w1, w2, h, a, y_part, sh.C, sh.K, sh.HD, sh.V, **t,
                                 ACT=f["ACT"], PREC=sh.prec)
    _bias_kernel[(sh.N,)](y_part, k, v, y0, dz, sh.NJ, sh.C, sh.V, NORM_EPS, BC=t["BC"], BV=t["BV"],
                          NORM=f["NORM"], RES=f["RES"], L2=f["L2"])
    w1n, w2n, z1n, z2n = (torch.empty_like(x) for x in (w1, w2, z1, z2))
    _update_kernel[sh.hidden_grid](k, h, a, dz, w1, w2, z1, z2, gam, e, mom, dl, zl, d1, w1n, w2n,
                                   z1n, z2n, sh.C, sh.K, sh.HD, sh.V, **t, ACT=f["ACT"],
                                   MOM=f["MOM"], PREC=sh.prec)
    return h, a, d1, dz, y0, w1n, w2n, z1n, z2n


def _backward(saved: tuple[Tensor, ...], grads: tuple[Tensor, ...], sh: _Shape) -> tuple[Tensor, ...]:
    """Gradients of ``k, v, w1, w2, z1, z2, gam, e, mom, dl, zl`` from those of
    ``a, d1, dz, w1', w2', z1', z2'`` (three kernels, then sums over the hidden blocks)."""
    k, v, w1, w2, z1, z2, gam, e, mom, dl, zl, h, a, d1, dz, y0 = saved
    g_a, g_d1, g_dz, g_w1n, g_w2n, g_z1n, g_z2n = grads
    t, f = sh.tiles, sh.flags
    new = lambda *s: torch.empty(*s, device=k.device, dtype=k.dtype)  # noqa: E731
    g_w1, g_w2, g_z1, g_z2 = (torch.empty_like(x) for x in (w1, w2, z1, z2))
    ga_part, gh_part, t_buf = (new(sh.N, sh.C, sh.HD) for _ in range(3))
    gk_part, gdz_part = new(sh.N, sh.NJ, sh.C, sh.K), new(sh.N, sh.NJ, sh.C, sh.V)
    # every entry is written (the momentum ones only with MOM; without it their gradients go to
    # detached placeholders and are dropped), so no zero-fill is needed
    gdl_part, gzl_part, scal_part = new(sh.N, sh.NJ, sh.C), new(sh.N, sh.NJ, sh.C), new(sh.N, sh.NJ, 3)
    _bwd_hidden_kernel[sh.hidden_grid](
        k, h, a, d1, dz, w1, w2, z1, z2, gam, e, mom, dl, zl, g_a, g_d1, g_w1n, g_w2n, g_z1n,
        g_z2n, g_w1, g_w2, g_z1, g_z2, ga_part, gh_part, t_buf, gk_part, gdz_part, gdl_part,
        gzl_part, scal_part, sh.C, sh.K, sh.HD, sh.V, **t, ACT=f["ACT"], MOM=f["MOM"], PREC=sh.prec)
    g_y0, g_v = new(sh.N, sh.C, sh.V), new(sh.N, sh.C, sh.V)
    gk_res = new(sh.N, sh.C, sh.K) if f["RES"] else g_v  # written only with the residual
    _bwd_bias_kernel[(sh.N,)](gdz_part, g_dz, y0, k, v, g_y0, g_v, gk_res, sh.NJ, sh.C, sh.V,
                              NORM_EPS, BC=t["BC"], BV=t["BV"], NORM=f["NORM"], RES=f["RES"],
                              L2=f["L2"])
    _bwd_keys_kernel[sh.hidden_grid](k, h, a, w1, w2, g_y0, ga_part, gh_part, g_w1, g_w2, gk_part,
                                     sh.C, sh.K, sh.HD, sh.V, **t, ACT=f["ACT"], PREC=sh.prec)
    g_k = gk_part.sum(1) + gk_res if f["RES"] else gk_part.sum(1)  # [N, C, K]
    scal = scal_part.sum(1)  # [N, 3]
    return (g_k, g_v, g_w1, g_w2, g_z1, g_z2, scal[:, 0], scal[:, 1], scal[:, 2],
            gdl_part.sum(1), gzl_part.sum(1))


class _FusedStep(torch.autograd.Function):
    """One chunk step on flattened ``[N, ...]`` float32 tensors; backward by three kernels."""

    @staticmethod
    def forward(ctx, k, v, w1, w2, z1, z2, gam, e, mom, dl, zl, sh):  # noqa: ANN001, ANN205
        h, a, d1, dz, y0, w1n, w2n, z1n, z2n = _forward(k, v, w1, w2, z1, z2, gam, e, mom, dl, zl, sh)
        ctx.save_for_backward(k, v, w1, w2, z1, z2, gam, e, mom, dl, zl, h, a, d1, dz, y0)
        ctx.sh = sh
        return a, d1, dz, w1n, w2n, z1n, z2n

    @staticmethod
    @once_differentiable  # the kernels' backward is not itself differentiable
    def backward(ctx, *grads):  # noqa: ANN001, ANN205
        saved = ctx.saved_tensors
        like = (saved[12], saved[13], saved[14], saved[2], saved[3], saved[4], saved[5])
        grads = tuple(torch.zeros_like(x) if g is None else g.contiguous() for g, x in zip(grads, like))
        out = _backward(saved, grads, ctx.sh)
        return (*(g if need else None for g, need in zip(out, ctx.needs_input_grad)), None)


def fused_step(state: DeepMemoryState, k: Tensor, v: Tensor, d: Tensor | None,
               row: dict[str, Tensor], cfg: DeepMemoryConfig, prec: str = "ieee"
               ) -> tuple[list[Tensor], list[Tensor], DeepMemoryState]:
    """``key_gradients`` + ``_advance_chunk`` for one chunk, differentiable (backward kernels).

    k: [B, H, C, K], v: [B, H, C, V] (float32), state weights/momenta [B, H, d_in, d_out],
    ``d`` (the huber threshold) is unused by the l2 and dot biases,
    ``row``: the chunk-end coefficients (``gam, e, mom`` [B, H]; ``dmat, zmat`` [B, H, C]).
    ``prec``: ``tl.dot`` input precision, ``"ieee"`` (float32) or ``"tf32"`` (half-precision
    models: ``chunk.dot_precision``). Returns ``(ins, deltas, new_state)`` as the PyTorch step does.
    """
    B, H, C, K = k.shape
    N = B * H
    flat = lambda x, *s: x.reshape(N, *s).contiguous()  # noqa: E731
    kf, vf = flat(k, C, K), flat(v, C, v.shape[-1])
    w1, w2 = (flat(w, *w.shape[2:]) for w in state.weights)
    mom_on = state.momentum is not None
    if mom_on:
        z1, z2 = (flat(z, *z.shape[2:]) for z in state.momentum)
        e, mom, zl = flat(row["e"]), flat(row["mom"]), flat(row["zmat"], C)
    else:  # placeholders the kernels never read (MOM=False); detached: they take no gradient
        z1, z2 = w1.detach(), w2.detach()
        e = mom = flat(row["gam"]).detach()
        zl = flat(row["dmat"], C).detach()
    sh = _shape(kf, vf, w1, cfg, mom_on, prec)
    a, d1, dz, w1n, w2n, z1n, z2n = _FusedStep.apply(kf, vf, w1, w2, z1, z2, flat(row["gam"]), e, mom,
                                                     flat(row["dmat"], C), zl, sh)
    HD = w1.shape[-1]
    unflat = lambda x, *s: x.reshape(B, H, *s)  # noqa: E731
    new = DeepMemoryState((unflat(w1n, K, HD), unflat(w2n, HD, v.shape[-1])),
                          (unflat(z1n, K, HD), unflat(z2n, HD, v.shape[-1])) if mom_on else None)
    return [k, unflat(a, C, HD)], [unflat(d1, C, HD), unflat(dz, C, v.shape[-1])], new
