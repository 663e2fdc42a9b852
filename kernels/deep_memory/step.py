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

import torch
import triton
import triton.language as tl
from torch import Tensor

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
def _bias_kernel(y_part, k, v, dz_out, NJ, C, V, eps,
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


def _block(n: int, cap: int | None = None) -> int:
    b = max(16, triton.next_power_of_2(n))
    return min(b, cap) if cap else b


def fused_step(state: DeepMemoryState, k: Tensor, v: Tensor, d: Tensor | None,
               row: dict[str, Tensor], cfg: DeepMemoryConfig
               ) -> tuple[list[Tensor], list[Tensor], DeepMemoryState]:
    """``key_gradients`` + ``_advance_chunk`` for one chunk, without autograd.

    k: [B, H, C, K], v: [B, H, C, V] (float32), state weights/momenta [B, H, d_in, d_out],
    ``d`` (the huber threshold) is unused by the l2 and dot biases,
    ``row``: the chunk-end coefficients (``gam, e, mom`` [B, H]; ``dmat, zmat`` [B, H, C]).
    Returns ``(ins, deltas, new_state)`` as the PyTorch step does.
    """
    B, H, C, K = k.shape
    V = v.shape[-1]
    w1, w2 = (w.contiguous() for w in state.weights)
    HD = w1.shape[-1]
    N = B * H
    BC, BK, BV, BH = _block(C), _block(K), _block(V), _block(HD, 64)
    NJ = triton.cdiv(HD, BH)
    prec = "ieee"  # float32 operands, float32 accuracy (the state is carried over many chunks)
    kf, vf = k.contiguous(), v.contiguous()
    f32 = dict(device=k.device, dtype=k.dtype)
    h, a, d1 = (torch.empty(B, H, C, HD, **f32) for _ in range(3))
    y_part = torch.empty(N, NJ, C, V, **f32)
    dz = torch.empty(B, H, C, V, **f32)
    _keys_kernel[(N, NJ)](kf, w1, w2, h, a, y_part, C, K, HD, V, BC=BC, BK=BK, BH=BH, BV=BV,
                          ACT=_ACT[cfg.activation], PREC=prec)
    _bias_kernel[(N,)](y_part, kf, vf, dz, NJ, C, V, NORM_EPS, BC=BC, BV=BV, NORM=cfg.norm,
                       RES=cfg.residual, L2=cfg.bias == "l2")
    mom_on = state.momentum is not None
    z1, z2 = (z.contiguous() for z in state.momentum) if mom_on else (w1, w2)
    w1n, w2n = torch.empty_like(w1), torch.empty_like(w2)
    z1n, z2n = (torch.empty_like(w1), torch.empty_like(w2)) if mom_on else (w1n, w2n)
    gam = row["gam"].contiguous()
    e = row["e"].contiguous() if mom_on else gam
    mom = row["mom"].contiguous() if mom_on else gam
    dl = row["dmat"].contiguous()
    zl = row["zmat"].contiguous() if mom_on else dl
    _update_kernel[(N, NJ)](kf, h, a, dz, w1, w2, z1, z2, gam, e, mom, dl, zl, d1, w1n, w2n, z1n,
                            z2n, C, K, HD, V, BC=BC, BK=BK, BH=BH, BV=BV,
                            ACT=_ACT[cfg.activation], MOM=mom_on, PREC=prec)
    new = DeepMemoryState((w1n, w2n), (z1n, z2n) if mom_on else None)
    return [k, a], [d1, dz], new
