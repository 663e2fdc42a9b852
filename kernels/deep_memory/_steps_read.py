"""Triton read-out of the step form (``steps.py``) for a depth-2 memory: one program per (batch ·
head, group) reads both layers with its group's weights formed tile by tile in registers.

Group g of S queries (the queries shifted by one token, ``steps._groups``) reads layer l with
``W_l,g = gam_g W_l + e_g Z_l + Σ_l,g`` (``Σ_l,g`` the gradients' share after g steps; group 0:
``gam = 1, e = 0, Σ = 0``): ``o = N(act(x W_1,g) W_2,g) (+ x)``. The PyTorch form writes the
``[S, hidden]`` activations of every group to memory and reads them back (forward and backward);
here they live in registers, per hidden tile of BH columns, and the weights' tiles come from L2
(``W``, ``Z`` are shared by the groups). The backward recomputes the forward from the queries
and writes ``x_lᵀ du_l`` for every group (``dΣ``, the start state's gradients follow as sums over
the groups), the queries' gradient, and ``<dΣ_g, W>``, ``<dΣ_g, Z>`` (the scales' gradients).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..tuning import autotune
from ._step_fwd import _act_fwd, _act_grad, _ln_grad

ACTS = {"identity": 0, "gelu": 1, "silu": 2, "relu": 3}
MAX_WIDTH = 128  # K, V and S held whole in a program's tiles


@triton.jit
def _eff_w1(w1, z1, s1, i, g, N, rk, ch, mk, mh, K, HD, gm, em, MOM: tl.constexpr):
    """Group g's first-layer weights on key rows rk, hidden columns ch: ``[BK, BH]`` (and the
    start state's tiles, for the scales' gradients)."""
    m = mk[:, None] & mh[None, :]
    off = rk[:, None] * HD + ch[None, :]
    wt = tl.load(w1 + i * K * HD + off, mask=m, other=0.0)
    st = tl.load(s1 + (i * N + tl.maximum(g - 1, 0)) * K * HD + off, mask=m, other=0.0)
    eff = gm * wt + tl.where(g > 0, st, 0.0)  # group 0: no gradients' share
    zt = wt * 0.0
    if MOM:
        zt = tl.load(z1 + i * K * HD + off, mask=m, other=0.0)
        eff += em * zt
    return eff, wt, zt


@triton.jit
def _eff_w2(w2, z2, s2, i, g, N, ch, rv, mh, mv, HD, V, gm, em, MOM: tl.constexpr):
    """Group g's second-layer weights on hidden rows ch, value columns rv: ``[BH, BV]``."""
    m = mh[:, None] & mv[None, :]
    off = ch[:, None] * V + rv[None, :]
    wt = tl.load(w2 + i * HD * V + off, mask=m, other=0.0)
    st = tl.load(s2 + (i * N + tl.maximum(g - 1, 0)) * HD * V + off, mask=m, other=0.0)
    eff = gm * wt + tl.where(g > 0, st, 0.0)
    zt = wt * 0.0
    if MOM:
        zt = tl.load(z2 + i * HD * V + off, mask=m, other=0.0)
        eff += em * zt
    return eff, wt, zt


@triton.jit
def _second_layer_in(x, w1, z1, w2, z2, s1, s2, i, g, N, rk, rv, mk, mv, K, HD, V, gm, em,
                     BS: tl.constexpr, BH: tl.constexpr, BV: tl.constexpr, ACT: tl.constexpr,
                     MOM: tl.constexpr, PREC: tl.constexpr):
    """``act(x W_1,g) W_2,g``, the last layer's output before norm and residual: [BS, BV]."""
    acc = tl.zeros([BS, BV], dtype=tl.float32)
    for h0 in range(0, HD, BH):
        ch = h0 + tl.arange(0, BH)
        mh = ch < HD
        e1, _, _ = _eff_w1(w1, z1, s1, i, g, N, rk, ch, mk, mh, K, HD, gm, em, MOM)
        a1 = _act_fwd(tl.dot(x, e1, input_precision=PREC), ACT)  # [BS, BH]
        e2, _, _ = _eff_w2(w2, z2, s2, i, g, N, ch, rv, mh, mv, HD, V, gm, em, MOM)
        acc += tl.dot(a1, e2, input_precision=PREC)
    return acc


@triton.jit
def _norm(y, m, V, eps):
    """Parameter-free LayerNorm of the rows of y [BS, BV] (masked columns): ``(x_hat, rstd)``."""
    yc = tl.where(m, y - (tl.sum(y, 1) / V)[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(yc * yc, 1) / V + eps)
    return yc * rstd[:, None], rstd


# launch shapes (warps, stages); the hidden tile BH is fixed (it orders the sums)
READ_SHAPES = ((8, 1), (4, 1), (8, 2), (16, 1))
READ_KEY = ["S", "K", "HD", "V", "BS", "BK", "BH", "BV", "ACT", "NORM", "RES", "MOM", "PREC"]


@autotune(READ_KEY, READ_SHAPES)
@triton.jit
def _read_fwd_kernel(x, w1, z1, w2, z2, s1, s2, gam, e, o, NG, N, S, K, HD, V, eps,
                     BS: tl.constexpr, BK: tl.constexpr, BH: tl.constexpr, BV: tl.constexpr,
                     ACT: tl.constexpr, NORM: tl.constexpr, RES: tl.constexpr, MOM: tl.constexpr,
                     PREC: tl.constexpr):
    i, g = tl.program_id(0).to(tl.int64), tl.program_id(1)
    rs, rk, rv = tl.arange(0, BS), tl.arange(0, BK), tl.arange(0, BV)
    ms, mk, mv = rs < S, rk < K, rv < V
    row = (i * NG + g) * S + rs  # [BS] rows of x and o
    xt = tl.load(x + row[:, None] * K + rk[None, :], mask=ms[:, None] & mk[None, :], other=0.0)
    gm = tl.load(gam + i * NG + g)
    em = 0.0
    if MOM:
        em = tl.load(e + i * NG + g)
    y = _second_layer_in(xt, w1, z1, w2, z2, s1, s2, i, g, N, rk, rv, mk, mv, K, HD, V, gm, em,
                         BS, BH, BV, ACT, MOM, PREC)
    m = ms[:, None] & mv[None, :]
    if NORM:
        y, _ = _norm(y, m, V, eps)
    if RES:
        y += xt  # K == V, BK == BV
    tl.store(o + row[:, None] * V + rv[None, :], y, mask=m)


@autotune(READ_KEY, READ_SHAPES)
@triton.jit
def _read_bwd_kernel(x, w1, z1, w2, z2, s1, s2, gam, e, do, dx, ds1, ds2, dgam, de, NG, N, S, K, HD,
                     V, eps, BS: tl.constexpr, BK: tl.constexpr, BH: tl.constexpr, BV: tl.constexpr,
                     ACT: tl.constexpr, NORM: tl.constexpr, RES: tl.constexpr, MOM: tl.constexpr,
                     PREC: tl.constexpr):
    i, g = tl.program_id(0).to(tl.int64), tl.program_id(1)
    rs, rk, rv = tl.arange(0, BS), tl.arange(0, BK), tl.arange(0, BV)
    ms, mk, mv = rs < S, rk < K, rv < V
    row = (i * NG + g) * S + rs
    mx, m = ms[:, None] & mk[None, :], ms[:, None] & mv[None, :]
    xt = tl.load(x + row[:, None] * K + rk[None, :], mask=mx, other=0.0)
    dot_ = tl.load(do + row[:, None] * V + rv[None, :], mask=m, other=0.0)
    gm = tl.load(gam + i * NG + g)
    em = 0.0
    if MOM:
        em = tl.load(e + i * NG + g)
    du2 = dot_
    if NORM:
        y = _second_layer_in(xt, w1, z1, w2, z2, s1, s2, i, g, N, rk, rv, mk, mv, K, HD, V, gm, em,
                             BS, BH, BV, ACT, MOM, PREC)
        xh, rstd = _norm(y, m, V, eps)
        du2 = _ln_grad(dot_, xh, rstd, m, V)
    dxt = tl.zeros([BS, BK], dtype=tl.float32)
    if RES:
        dxt += dot_
    sg = tl.sum(tl.zeros([BS], dtype=tl.float32), 0)  # <dΣ_g, W>, <dΣ_g, Z>
    se = sg
    for h0 in range(0, HD, BH):
        ch = h0 + tl.arange(0, BH)
        mh = ch < HD
        e1, w1t, z1t = _eff_w1(w1, z1, s1, i, g, N, rk, ch, mk, mh, K, HD, gm, em, MOM)
        u1 = tl.dot(xt, e1, input_precision=PREC)  # [BS, BH]
        a1 = _act_fwd(u1, ACT)
        e2, w2t, z2t = _eff_w2(w2, z2, s2, i, g, N, ch, rv, mh, mv, HD, V, gm, em, MOM)
        d2 = tl.dot(tl.trans(a1), du2, input_precision=PREC)  # [BH, BV] = a1ᵀ du2
        m2 = mh[:, None] & mv[None, :]
        tl.store(ds2 + (i * NG + g) * HD * V + ch[:, None] * V + rv[None, :], d2, mask=m2)
        du1 = tl.dot(du2, tl.trans(e2), input_precision=PREC) * _act_grad(u1, ACT)  # [BS, BH]
        du1 = tl.where(ms[:, None] & mh[None, :], du1, 0.0)
        d1 = tl.dot(tl.trans(xt), du1, input_precision=PREC)  # [BK, BH] = xᵀ du1
        m1 = mk[:, None] & mh[None, :]
        tl.store(ds1 + (i * NG + g) * K * HD + rk[:, None] * HD + ch[None, :], d1, mask=m1)
        sg += tl.sum(tl.sum(d2 * w2t, 1), 0) + tl.sum(tl.sum(d1 * w1t, 1), 0)
        if MOM:
            se += tl.sum(tl.sum(d2 * z2t, 1), 0) + tl.sum(tl.sum(d1 * z1t, 1), 0)
        dxt += tl.dot(du1, tl.trans(e1), input_precision=PREC)  # [BS, BK]
    tl.store(dx + row[:, None] * K + rk[None, :], dxt, mask=mx)
    tl.store(dgam + i * NG + g, sg)
    if MOM:
        tl.store(de + i * NG + g, se)


def supported(depth: int, K: int, V: int, S: int) -> bool:
    """Shapes the kernels take: depth 2, K, V and S at most ``MAX_WIDTH``."""
    return depth == 2 and max(K, V, S) <= MAX_WIDTH


def _blocks(S: int, K: int, V: int, HD: int) -> dict[str, int]:
    fit = lambda n: max(16, triton.next_power_of_2(n))  # noqa: E731  tl.dot's minimum is 16
    return {"BS": fit(S), "BK": fit(K), "BV": fit(V), "BH": min(32, fit(HD))}


class FusedRead(torch.autograd.Function):
    """``o [BH, NG, S, V]`` of the grouped queries ``x [BH, NG, S, K]`` (float32, contiguous);
    W1, Z1 ``[BH, K, HD]``, W2, Z2 ``[BH, HD, V]`` the start state (Z None without momentum),
    s1, s2 ``[BH, NG - 1, ...]`` the gradients' shares, gam, e ``[BH, NG]`` the groups' scales."""

    @staticmethod
    def forward(ctx, x: Tensor, w1: Tensor, z1: Tensor | None, w2: Tensor, z2: Tensor | None,  # noqa: ANN001
                s1: Tensor, s2: Tensor, gam: Tensor, e: Tensor | None, act: str, norm: bool,
                residual: bool, prec: str) -> Tensor:
        mom = z1 is not None
        x, w1, w2, s1, s2, gam = (t.contiguous() for t in (x, w1, w2, s1, s2, gam))
        z1, z2, e = ((t.contiguous() for t in (z1, z2, e)) if mom else (w1, w2, gam))
        BHn, NG, S, K = x.shape
        HD, V = w1.shape[-1], w2.shape[-1]
        o = torch.empty(BHn, NG, S, V, device=x.device, dtype=torch.float32)
        opts = dict(ACT=ACTS[act], NORM=norm, RES=residual, MOM=mom, PREC=prec, **_blocks(S, K, V, HD))
        _read_fwd_kernel[(BHn, NG)](x, w1, z1, w2, z2, s1, s2, gam, e, o, NG, NG - 1, S, K, HD, V, 1e-5,
                                    **opts)
        ctx.save_for_backward(x, w1, z1, w2, z2, s1, s2, gam, e)
        ctx.opts, ctx.mom = opts, mom
        return o

    @staticmethod
    @once_differentiable
    def backward(ctx, do: Tensor):  # noqa: ANN001, ANN205
        x, w1, z1, w2, z2, s1, s2, gam, e = ctx.saved_tensors
        BHn, NG, S, K = x.shape
        HD, V = w1.shape[-1], w2.shape[-1]
        dx = torch.empty_like(x)
        ds1 = torch.empty(BHn, NG, K, HD, device=x.device, dtype=torch.float32)
        ds2 = torch.empty(BHn, NG, HD, V, device=x.device, dtype=torch.float32)
        dgam = torch.empty_like(gam)
        de = torch.empty_like(gam) if ctx.mom else dgam
        _read_bwd_kernel[(BHn, NG)](x, w1, z1, w2, z2, s1, s2, gam, e, do.contiguous(), dx, ds1, ds2,
                                    dgam, de, NG, NG - 1, S, K, HD, V, 1e-5, **ctx.opts)
        scales = torch.stack([gam, e], 1) if ctx.mom else gam.unsqueeze(1)  # [BH, 1 or 2, NG]
        start1 = (scales @ ds1.flatten(-2)).unflatten(-1, (K, HD))  # [BH, 1 or 2, K, HD]
        start2 = (scales @ ds2.flatten(-2)).unflatten(-1, (HD, V))
        mom = ctx.mom
        return (dx, start1[:, 0], start1[:, 1] if mom else None, start2[:, 0], start2[:, 1] if mom else None,
                ds1[:, 1:], ds2[:, 1:], dgam, de if mom else None, None, None, None, None)
