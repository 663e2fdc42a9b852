"""Triton backend: the chunked algorithm of chunk_torch.py with a fused dual-form read-out.

The fused kernel computes, for every chunk of every (batch, head) at once,

    O = gam (X W_0) + e (X Z_0) + (tril(X A^T) * D) @ U          [N, C, DV]

without writing the [C, C] score matrix to memory (``gam, e`` a scale per row, ``W_0, Z_0`` the
chunk-start weights and momenta, read in place from the loop's buffers; ``A`` the keys' layer
inputs, ``D`` the decay/step coefficients, ``U`` the keys' output errors); X is loaded once for
the dense and the masked products. Its backward is a second Triton kernel, one program per
chunk, for every gradient: the masked part (dX, dA, dD, dU) and, per key block, the dense
products ``dO W_0^T`` (into dX and dgam) and ``(gam X)^T dO`` (dW_0), the same for ``Z_0``. These
used to be batched GEMMs and elementwise passes in torch: ~16 GB of the backward's traffic at
titans-pytorch's benchmark shape (``benchmarks/traffic.py``), now ~6 GB more in the kernel. The chunk loop
(per chunk: the keys' forward/backward and the state update) is three Triton kernels per chunk
each way (``step.py``; two forward at depth 2, where the update kernel carries the next chunk's
keys forward) for depth-1 and depth-2 memories with linear retention (any attentional
bias) in float32; there the loop and every layer's read-out are one autograd Function
(``fused.py``) and the read-out's backward leaves ``dW_0``, ``dZ_0`` to the loop's backward
kernels (``DENSE=False``). Other configurations take the PyTorch loop.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from .chunk_torch import chunk_deep_memory_with, readout_torch
from .config import DeepMemoryConfig
from .memory import DeepMemoryState, Weights, accum_dtype
from .fused import fused_dual_form
from .step import fused_step_supported
from ..tuning import autotune
from ..jit_keys import settle

MAX_TRITON_CHUNK = 128  # larger chunks make the [C, C] tile too big for registers


# Launch shapes tuned on the GPU (kernels/tuning.py); the first is the former fixed choice.
# The backward's sm_90 builds spill registers at 4 warps (tf32, chunk 64: 3.1 KB per thread).
@autotune(["C", "DK", "DV", "BC", "BK", "BV", "MOM", "PREC"], ((4, 3), (8, 3), (8, 2)))
@triton.jit
def _readout_fwd_kernel(
    X, W0, Z0, GAM, E, A, D, U, O, C, DK, DV,
    BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, MOM: tl.constexpr, PREC: tl.constexpr,
):
    """One program: one chunk ``n`` and one block of BV output channels."""
    i_n = tl.program_id(0).to(tl.int64)
    i_v = tl.program_id(1)
    rc = tl.arange(0, BC)
    rk = tl.arange(0, BK)
    rv = i_v * BV + tl.arange(0, BV)
    mc = rc < C
    mv = rv < DV
    acc_w = tl.zeros([BC, BV], dtype=tl.float32)  # X W_0
    acc_z = tl.zeros([BC, BV], dtype=tl.float32)  # X Z_0
    att = tl.zeros([BC, BC], dtype=tl.float32)  # scores X A^T
    for k0 in range(0, DK, BK):
        kk = k0 + rk
        mk = kk < DK
        x = tl.load(X + i_n * C * DK + rc[:, None] * DK + kk[None, :], mask=mc[:, None] & mk[None, :], other=0.0)
        pw = i_n * DK * DV + kk[:, None] * DV + rv[None, :]
        mw = mk[:, None] & mv[None, :]
        acc_w += tl.dot(x, tl.load(W0 + pw, mask=mw, other=0.0), input_precision=PREC)
        if MOM:
            acc_z += tl.dot(x, tl.load(Z0 + pw, mask=mw, other=0.0), input_precision=PREC)
        a = tl.load(A + i_n * C * DK + rc[:, None] * DK + kk[None, :], mask=mc[:, None] & mk[None, :], other=0.0)
        att += tl.dot(x, tl.trans(a), input_precision=PREC)
    acc = tl.load(GAM + i_n * C + rc, mask=mc, other=0.0)[:, None] * acc_w
    if MOM:
        acc += tl.load(E + i_n * C + rc, mask=mc, other=0.0)[:, None] * acc_z
    mcc = mc[:, None] & mc[None, :]
    d = tl.load(D + i_n * C * C + rc[:, None] * C + rc[None, :], mask=mcc, other=0.0)
    att = tl.where((rc[:, None] >= rc[None, :]) & mcc, att * d, 0.0)
    u = tl.load(U + i_n * C * DV + rc[:, None] * DV + rv[None, :], mask=mc[:, None] & mv[None, :], other=0.0)
    acc += tl.dot(att, u, input_precision=PREC)
    tl.store(O + i_n * C * DV + rc[:, None] * DV + rv[None, :], acc, mask=mc[:, None] & mv[None, :])


@triton.jit
def _dense_bwd_block(x, s, w, DO, i_n, rc, mc, kk, mk, rv, C, DK, DV, DW,
                     BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, STORE: tl.constexpr,
                     PREC: tl.constexpr):
    """One key block ``kk`` of the dense product ``s ⊙ (X W)`` (``s [BC]`` a scale per row):
    stores ``dW[kk] = (s X)^T dO`` (with STORE; without, the chunk loop's backward forms it
    from X, dO and s where it needs it) and returns ``dO W[kk]^T`` [BC, BK] (for dX and ds)."""
    xs = x * s[:, None]  # [BC, BK]
    g = tl.zeros([BC, BK], dtype=tl.float32)
    for v0 in range(0, DV, BV):
        vv = v0 + rv
        mv = vv < DV
        do = tl.load(DO + i_n * C * DV + rc[:, None] * DV + vv[None, :], mask=mc[:, None] & mv[None, :], other=0.0)
        pw = i_n * DK * DV + kk[:, None] * DV + vv[None, :]
        mw = mk[:, None] & mv[None, :]
        wT = tl.load(w + i_n * DK * DV + kk[None, :] * DV + vv[:, None], mask=mv[:, None] & mk[None, :], other=0.0)
        g += tl.dot(do, wT, input_precision=PREC)  # [BC, BK] = dO W^T
        if STORE:
            tl.store(DW + pw, tl.dot(tl.trans(xs), do, input_precision=PREC), mask=mw)
    return g


@autotune(["C", "DK", "DV", "BC", "BK", "BV", "MOM", "DENSE", "PREC"], ((4, 3), (8, 3), (16, 1)))
@triton.jit
def _readout_bwd_kernel(
    X, A, D, U, DO, W0, GAM, Z0, E, DX, DA, DD, DU, DW0, DGAM, DZ0, DE, C, DK, DV,
    BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, MOM: tl.constexpr,
    DENSE: tl.constexpr, PREC: tl.constexpr,
):
    """One program per chunk: every gradient of the read-out, the masked part ``(tril(X A^T) *
    D) @ U`` and the dense ``gam (X W_0) + e (X Z_0)``: dX, dA, dD, dU, dgam (de) and, with
    DENSE, dW_0 (dZ_0)."""
    i_n = tl.program_id(0).to(tl.int64)
    rc = tl.arange(0, BC)
    rk = tl.arange(0, BK)
    rv = tl.arange(0, BV)
    mc = rc < C
    mcc = mc[:, None] & mc[None, :]
    causal = (rc[:, None] >= rc[None, :]) & mcc
    # The scores and their gradient are also formed transposed, from the loaded tiles, for dA and
    # dU: a transpose of a dot's result in registers is what sm_90 builds with Triton 3.4-3.7.0
    # miscompiled in fla's gated backward (the chunk-16 build of this kernel had two).
    att = tl.zeros([BC, BC], dtype=tl.float32)
    att_t = tl.zeros([BC, BC], dtype=tl.float32)
    for k0 in range(0, DK, BK):
        kk = k0 + rk
        m = mc[:, None] & (kk < DK)[None, :]
        x = tl.load(X + i_n * C * DK + rc[:, None] * DK + kk[None, :], mask=m, other=0.0)
        a = tl.load(A + i_n * C * DK + rc[:, None] * DK + kk[None, :], mask=m, other=0.0)
        att += tl.dot(x, tl.trans(a), input_precision=PREC)  # [BC, BC] = X A^T
        att_t += tl.dot(a, tl.trans(x), input_precision=PREC)  # its transpose
    datt = tl.zeros([BC, BC], dtype=tl.float32)
    datt_t = tl.zeros([BC, BC], dtype=tl.float32)
    for v0 in range(0, DV, BV):
        vv = v0 + rv
        m = mc[:, None] & (vv < DV)[None, :]
        do = tl.load(DO + i_n * C * DV + rc[:, None] * DV + vv[None, :], mask=m, other=0.0)
        u = tl.load(U + i_n * C * DV + rc[:, None] * DV + vv[None, :], mask=m, other=0.0)
        datt += tl.dot(do, tl.trans(u), input_precision=PREC)  # [BC, BC] = dO U^T
        datt_t += tl.dot(u, tl.trans(do), input_precision=PREC)
    d = tl.load(D + i_n * C * C + rc[:, None] * C + rc[None, :], mask=mcc, other=0.0)
    tl.store(DD + i_n * C * C + rc[:, None] * C + rc[None, :], tl.where(causal, datt * att, 0.0), mask=mcc)
    dp = tl.where(causal, datt * d, 0.0)  # gradient of the raw scores X A^T
    d_t = tl.load(D + i_n * C * C + rc[None, :] * C + rc[:, None], mask=mcc, other=0.0)  # D^T
    causal_t = (rc[:, None] <= rc[None, :]) & mcc
    dp_t = tl.where(causal_t, datt_t * d_t, 0.0)
    p_t = tl.where(causal_t, att_t * d_t, 0.0)
    gam = tl.load(GAM + i_n * C + rc, mask=mc, other=0.0)  # [BC]
    e = gam
    if MOM:
        e = tl.load(E + i_n * C + rc, mask=mc, other=0.0)
    dgam = tl.zeros([BC], dtype=tl.float32)
    de = tl.zeros([BC], dtype=tl.float32)
    for k0 in range(0, DK, BK):
        kk = k0 + rk
        mk = kk < DK
        m = mc[:, None] & mk[None, :]
        x = tl.load(X + i_n * C * DK + rc[:, None] * DK + kk[None, :], mask=m, other=0.0)
        a = tl.load(A + i_n * C * DK + rc[:, None] * DK + kk[None, :], mask=m, other=0.0)
        dx = tl.dot(dp, a, input_precision=PREC)
        da = tl.dot(dp_t, x, input_precision=PREC)
        gw = _dense_bwd_block(x, gam, W0, DO, i_n, rc, mc, kk, mk, rv, C, DK, DV, DW0, BC, BK, BV,
                              DENSE, PREC)
        dx += gam[:, None] * gw
        dgam += tl.sum(gw * x, 1)
        if MOM:
            gz = _dense_bwd_block(x, e, Z0, DO, i_n, rc, mc, kk, mk, rv, C, DK, DV, DZ0, BC, BK,
                                  BV, DENSE, PREC)
            dx += e[:, None] * gz
            de += tl.sum(gz * x, 1)
        tl.store(DX + i_n * C * DK + rc[:, None] * DK + kk[None, :], dx, mask=m)
        tl.store(DA + i_n * C * DK + rc[:, None] * DK + kk[None, :], da, mask=m)
    tl.store(DGAM + i_n * C + rc, dgam, mask=mc)
    if MOM:
        tl.store(DE + i_n * C + rc, de, mask=mc)
    for v0 in range(0, DV, BV):
        vv = v0 + rv
        m = mc[:, None] & (vv < DV)[None, :]
        do = tl.load(DO + i_n * C * DV + rc[:, None] * DV + vv[None, :], mask=m, other=0.0)
        du = tl.dot(p_t, do, input_precision=PREC)
        tl.store(DU + i_n * C * DV + rc[:, None] * DV + vv[None, :], du, mask=m)


def _blocks(C: int, DK: int, DV: int) -> tuple[int, int, int]:
    """Power-of-two tiles, at least 16 (tl.dot's minimum)."""
    def fit(n: int, cap: int) -> int:
        return min(cap, max(16, triton.next_power_of_2(n)))

    return max(16, triton.next_power_of_2(C)), fit(DK, 64), fit(DV, 64)


def readout_forward(x: Tensor, w0: Tensor, gam: Tensor, z0: Tensor | None, e: Tensor | None,
                    a: Tensor, d: Tensor, u: Tensor, prec: str) -> Tensor:
    """The fused read-out's kernel on contiguous float32 tensors (:func:`readout_triton`'s
    arguments; ``z0 = e = None`` without momentum): ``o [N, C, DV]``."""
    N, C, DK = x.shape
    DV = u.shape[-1]
    BC, BK, BV = _blocks(C, DK, DV)
    mom = z0 is not None
    o = torch.empty(N, C, DV, device=x.device, dtype=torch.float32)  # [N, C, DV]
    _readout_fwd_kernel[(N, triton.cdiv(DV, BV))](
        x, w0, z0 if mom else w0, gam, e if mom else gam, a, d, u, o, C, DK, DV, BC=BC, BK=BK,
        BV=BV, MOM=mom, PREC=prec,
    )
    return o


def readout_backward(do: Tensor, x: Tensor, w0: Tensor, gam: Tensor, z0: Tensor | None,
                     e: Tensor | None, a: Tensor, d: Tensor, u: Tensor, prec: str,
                     dense: bool = True) -> tuple[Tensor | None, ...]:
    """Every gradient of :func:`readout_forward` from ``do [N, C, DV]``: ``dx, dw0, dgam, dz0,
    de, da, dd, du`` (``dz0, de`` None without momentum; ``dw0, dz0`` None unless ``dense``:
    the fused dual form forms them inside the chunk loop's backward instead)."""
    N, C, DK = x.shape
    DV = u.shape[-1]
    mom = z0 is not None
    dx, da, du = torch.empty_like(x), torch.empty_like(a), torch.empty_like(u)
    dd = torch.zeros_like(d)  # [N, C, C], zero above the diagonal
    dgam = torch.empty_like(gam)  # [N, C]
    de = torch.empty_like(gam) if mom else dgam
    dw0 = torch.empty_like(w0) if dense else dx  # [N, DK, DV]; dx: never written
    dz0 = torch.empty_like(w0) if dense and mom else dw0
    BC, BK, BV = _blocks(C, DK, DV)
    _readout_bwd_kernel[(N,)](
        x, a, d, u, do, w0, gam, z0 if mom else w0, e if mom else gam, dx, da, dd, du, dw0, dgam,
        dz0, de, C, DK, DV, BC=BC, BK=BK, BV=BV, MOM=mom, DENSE=dense, PREC=prec,
    )
    return (dx, dw0 if dense else None, dgam, dz0 if dense and mom else None,
            de if mom else None, da, dd, du)


class _FusedReadout(torch.autograd.Function):
    """Autograd wrapper around the two kernels (float32 in, float32 out); ``z0 = e = None``
    without momentum."""

    @staticmethod
    def forward(ctx, x: Tensor, w0: Tensor, gam: Tensor, z0: Tensor | None, e: Tensor | None,
                a: Tensor, d: Tensor, u: Tensor, prec: str) -> Tensor:
        mom = z0 is not None
        x, w0, gam, a, d, u = (t.contiguous().float() for t in (x, w0, gam, a, d, u))
        z0, e = (t.contiguous().float() for t in (z0, e)) if mom else (None, None)
        ctx.save_for_backward(x, w0, gam, z0, e, a, d, u)
        ctx.prec = prec
        return readout_forward(x, w0, gam, z0, e, a, d, u, prec)

    @staticmethod
    @once_differentiable  # the kernels' backward is not itself differentiable
    def backward(ctx, do: Tensor) -> tuple[Tensor | None, ...]:
        return (*readout_backward(do.contiguous().float(), *ctx.saved_tensors, ctx.prec), None)


def readout_triton(x: Tensor, w0: Tensor, gam: Tensor, z0: Tensor | None, e: Tensor | None,
                   a: Tensor, d: Tensor, u: Tensor, prec: str = "ieee") -> Tensor:
    """Fused ``gam (x W_0) + e (x Z_0) + (tril(x a^T) * d) @ u`` (see the module docstring);
    same as :func:`chunk_torch.readout_torch`, differentiable once. ``prec``: ``tl.dot`` input
    precision (``"ieee"`` float32, ``"tf32"`` for half-precision models)."""
    return _FusedReadout.apply(x, w0, gam, z0, e, a, d, u, prec)


def dot_precision(dtype: torch.dtype, carried: bool = False) -> str:
    """``tl.dot`` precision for a model's dtype: float32 and float64 models get float32 dots;
    bf16/fp16 models get tf32 (10-bit mantissa, finer than their own 8- or 11-bit inputs), or,
    ``carried``, tf32x3 (three tf32 products per dot on the tensor cores, float32's accuracy) for
    the chunk loop's state update and its backward, whose rounding each chunk hands to the next
    (a chunk's end state is the next one's start). With tf32 there, bf16 gradients drifted from
    the truth with the number of chunks: 7.6e-3 relative after 3 chunks of 16, 5.8e-2 after 10
    (the float32 form on the same bf16 inputs: 2.4e-3)."""
    if dtype in (torch.float32, torch.float64):
        return "ieee"
    return "tf32x3" if carried else "tf32"


def triton_deep_memory(
    q: Tensor, k: Tensor, v: Tensor, eta: Tensor, init_weights: Weights, cfg: DeepMemoryConfig,
    g: Tensor | None = None, mu: Tensor | None = None, lam: Tensor | None = None,
    delta: Tensor | None = None, initial_state: DeepMemoryState | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, DeepMemoryState | None]:
    """Chunk-wise deep memory with the Triton read-out; same API as ``recurrent_deep_memory``.

    Nonlinear retentions (no dual form) and chunks above ``MAX_TRITON_CHUNK`` use the PyTorch
    read-out instead.
    """
    use = cfg.linear_retention and cfg.chunk_size <= MAX_TRITON_CHUNK
    prec = dot_precision(q.dtype)
    dual = (functools.partial(fused_dual_form, prec=dot_precision(q.dtype, carried=True))
            if use and fused_step_supported(cfg, accum_dtype(q)) else None)
    return chunk_deep_memory_with(
        q, k, v, eta, init_weights, cfg, g, mu, lam, delta, initial_state, output_final_state,
        functools.partial(readout_triton, prec=prec) if use else readout_torch, dual=dual,
    )


settle(globals())  # Triton cache keys formed at import, whatever kernel runs first (jit_keys.py)
