"""One chunk step of a depth-2 deep memory in three Triton kernels, and its backward in three.

The step is phase 1 of ``chunk_torch._dual_form`` for one chunk of every (batch, head) at once:
the keys go forward through the MLP at the chunk's starting weights, the attentional bias is
back-propagated by hand (``key_gradients``), and the state moves to the chunk's end
(``_advance_chunk``). In PyTorch that is about 175 ops per chunk (forward + backward); here:

forward (``_step_fwd.py``)
1. ``_keys_kernel``, grid (N, hidden blocks): ``h = k W1[:, j]``, ``a = act(h)``; stores ``h``
   and ``a`` and this block's share ``a W2[j, :]`` of the output ``y0``;
2. ``_bias_kernel``, grid (N,): ``y0`` = the sum of the shares, LayerNorm, residual, the bias
   gradient ``r`` and its LayerNorm backward ``dz``;
3. ``_update_kernel``, grid (N, hidden blocks): ``d1 = act'(h) * (dz W2[j, :]^T)`` and the new
   ``W1[:, j], W2[j, :]`` (and momenta) with the decayed outer-product sums of the chunk;

backward (``_step_bwd.py``)
4. ``_bwd_hidden_kernel`` (N, hidden blocks): through the state update (decay, momentum, the
   outer products) and through ``d1``;
5. ``_bwd_bias_kernel`` (N,): from the gradient of ``dz`` back to ``y0`` (LayerNorm's backward
   differentiated once more), and to ``v`` and (residual) ``k``;
6. ``_bwd_keys_kernel`` (N, hidden blocks): through ``y0 = a W2``, ``a = act(h)``, ``h = k W1``.

Every ``tl.dot`` operand comes from a load (values computed from a dot go through memory, with a
barrier): Triton 3.4-3.7.0 miscompiles some dot-of-dot patterns on Hopper (fla issue #640).
Transposed operands are loaded transposed. The math is in README.md ("Chunk step").
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._step_bwd import _bwd_bias_kernel, _bwd_hidden_kernel, _bwd_keys_kernel
from ._step_fwd import _bias_kernel, _keys_kernel, _update_kernel
from .config import DeepMemoryConfig
from .memory import NORM_EPS, DeepMemoryState

_ACT = {"identity": 0, "gelu": 1, "silu": 2, "relu": 3}


def fused_step_supported(cfg: DeepMemoryConfig, dtype: torch.dtype) -> bool:
    """Depth-2 memories with linear retention and an l2 or dot bias, computed in float32."""
    return (cfg.depth == 2 and cfg.linear_retention and cfg.bias in ("l2", "dot")
            and cfg.activation in _ACT and dtype == torch.float32)


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
