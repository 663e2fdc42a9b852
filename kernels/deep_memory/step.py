"""Phase 1 of a depth-2 (or depth-1: ``_step_linear.py``) deep memory: the chunk loop as one
autograd Function, two Triton kernels per chunk forward and two backward (plus one keys kernel
for the first chunk each way).

Each step is phase 1 of ``chunk_torch._dual_form`` for one chunk of every (batch, head) at once:
the keys go forward through the MLP at the chunk's starting weights, the attentional bias is
back-propagated by hand (``key_gradients``), and the state moves to the chunk's end
(``_advance_chunk``). In PyTorch that is about 166 kernel launches per chunk (forward +
backward); here, for depth 2:

forward (``_step_fwd.py``)
1. ``_keys_kernel``, grid (N, hidden blocks): ``h = k W1[:, j]``, ``a = act(h)``; stores ``h``
   and ``a`` and this block's share ``a W2[j, :]`` of the output ``y0`` (the first chunk only:
   later chunks' run at the end of 3. of the chunk before, ``NEXT``);
2. ``_bias_kernel``, grid (N,): ``y0`` = the sum of the shares, LayerNorm, residual, the bias
   gradient ``r`` and its LayerNorm backward ``dz``;
3. ``_update_kernel``, grid (N, hidden blocks): ``d1 = act'(h) * (dz W2[j, :]^T)`` and the new
   ``W1[:, j], W2[j, :]`` (and momenta) with the decayed outer-product sums of the chunk; then
   (``NEXT``) 1. for the next chunk through the block it just wrote (the same program owns
   ``W1[:, j], W2[j, :]``, so no other program's result is needed);

backward (``_step_bwd.py``)
4. ``_bwd_hidden_kernel`` (N, hidden blocks): first (``LATER``) 6. of the chunk after this
   one, which completes that chunk's start-state gradient (this chunk's end-state gradient) in
   the program's own block; then through the state update (decay, momentum, the outer
   products) and through ``d1``;
5. ``_bwd_bias_kernel`` (N,): from the gradient of ``dz`` back to ``y0`` (LayerNorm's backward
   differentiated once more), and to ``v`` and (residual) ``k``;
6. ``_bwd_keys_kernel`` (N, hidden blocks): through ``y0 = a W2``, ``a = act(h)``, ``h = k W1``
   (the first chunk only; the others' run in 4. of the chunk before).

The loop is ``loop_forward`` / ``loop_backward`` over a ``LoopTape``; the Triton backend runs
them inside ``fused.py``'s Function together with the read-outs (the read-out's gradient on the
chunk-start states then formed in the backward kernels, ``Fold``), and ``fused_phase1`` wraps
them alone as one ``torch.autograd.Function`` (``_FusedLoop``). The chunks' inputs are laid
out chunk-major (``[n, N, ...]``, so each chunk's slice is contiguous), every chunk writes into
buffers allocated once for all chunks (the chunk-start states: per part W1, W2, Z1, Z2 one
``[n + 1, N, d_in, d_out]`` buffer, which the read-out then takes in place), and the backward
walks the chunks in reverse carrying the state's gradient; the read-out's gradient on each
chunk-start state is added inside ``_bwd_hidden_kernel``, and every per-chunk view is made up
front. Per chunk that leaves four kernel launches at depth 2 (six at depth 1; depth 2's
per-hidden-block partials of dk are summed once for all chunks after the loop), and no
per-chunk autograd nodes, copies, stacks or gradient accumulation
(``benchmarks/count_launches.py`` counts them).

Every ``tl.dot`` operand comes from a load (values computed from a dot go through memory, with a
barrier): Triton 3.4-3.7.0 miscompiles some dot-of-dot patterns on Hopper (fla issue #640).
Transposed operands are loaded transposed. The math is in README.md ("Chunk step").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import triton
from torch import Tensor
from torch.autograd.function import once_differentiable
from triton.runtime.autotuner import Autotuner

from ._step_bwd import _bwd_bias_kernel, _bwd_hidden_kernel, _bwd_keys_kernel
from ._step_fwd import ACT_CODES, BIAS_CODES, _bias_kernel, _keys_kernel, _update_kernel, bias_grid
from ._step_linear import (
    _linear_bwd_keys_kernel, _linear_bwd_update_kernel, _linear_keys_kernel, _linear_update_kernel,
)
from .config import DeepMemoryConfig
from .memory import NORM_EPS, DeepMemoryState



def fused_step_supported(cfg: DeepMemoryConfig, dtype: torch.dtype) -> bool:
    """Depth-1 and depth-2 memories with linear retention (any bias), computed in float32."""
    return (cfg.depth in (1, 2) and cfg.linear_retention and cfg.bias in BIAS_CODES
            and cfg.activation in ACT_CODES and dtype == torch.float32)


@dataclass(frozen=True)
class _Shape:
    """Sizes, tiles and flags of one chunk step (launch constants)."""

    depth: int  # 1: y = k W (``_step_linear.py``), 2: the hidden-block kernels
    N: int
    C: int
    K: int
    HD: int  # hidden width (depth 2); V at depth 1
    V: int
    NJ: int  # hidden blocks (depth 2); 1 at depth 1
    tiles: dict
    flags: dict  # ACT, NORM, RES, BIAS, MOM
    prec: str  # tl.dot input precision
    bp: float  # the bias's parameter: p (lp), the radius (robust), else unused
    chosen: dict = field(default_factory=dict, compare=False)  # of _launch: configs this call tuned

    @property
    def hidden_grid(self) -> tuple[int, int]:
        return (self.N, self.NJ)

    @property
    def sub(self) -> int:
        """Sub-block of the key and value dimensions that the update and backward hidden kernels
        walk (so no ``[C, K]`` or ``[K, BH]`` tile is whole in registers)."""
        return min(64, self.tiles["BK"], self.tiles["BV"])


def _block(n: int, cap: int | None = None) -> int:
    b = max(16, triton.next_power_of_2(n))
    return min(b, cap) if cap else b


def _shape(k: Tensor, v: Tensor, w1: Tensor, cfg: DeepMemoryConfig, mom_on: bool, prec: str) -> _Shape:
    N, C, K = k.shape
    V, HD = v.shape[-1], w1.shape[-1]
    tiles = dict(BC=_block(C), BK=_block(K), BH=_block(HD, 64), BV=_block(V))
    if cfg.depth == 1:  # value blocks of the linear update kernels instead of hidden blocks
        tiles = dict(BC=tiles["BC"], BK=tiles["BK"], BV=tiles["BV"], BVU=_block(V, 64))
    flags = dict(ACT=ACT_CODES[cfg.activation], NORM=cfg.norm, RES=cfg.residual, BIAS=BIAS_CODES[cfg.bias],
                 MOM=mom_on)
    bp = {"lp": cfg.p, "robust": cfg.robust_radius}.get(cfg.bias) or 0.0
    nj = triton.cdiv(HD, tiles["BH"]) if cfg.depth == 2 else 1
    return _Shape(cfg.depth, N, C, K, HD, V, nj, tiles, flags, prec, float(bp))


def _launch(sh: _Shape, kernel: Any, grid: Any, *args: Any, **kwargs: Any) -> None:
    """``kernel[grid](*args, **kwargs)``. An autotuned kernel goes through its autotuner on its
    first launch with these keyword arguments in this call (which tunes on a new key); the
    later ones (every chunk after the first: the same shapes, dtypes and flags) launch the
    configuration it chose directly: the autotuner's key computation costs ~30 µs of host time
    per launch at 50 arguments (the CI machine's CPU), a loop that launches four kernels per
    chunk is host-bound, and the choice cannot change within a call."""
    if not isinstance(kernel, Autotuner):
        kernel[grid](*args, **kwargs)
        return
    key = (kernel, tuple(kwargs.items()))
    config = sh.chosen.get(key)
    if config is None:
        kernel[grid](*args, **kwargs)
        sh.chosen[key] = kernel.best_config
    else:
        kernel.fn[grid](*args, **kwargs, **config.all_kwargs())


def _part_shapes(sh: _Shape) -> list[tuple[int, int, int]]:
    """``W1 [N, K, HD], W2 [N, HD, V]`` (depth 1: ``W [N, K, V]``), then the momenta likewise."""
    layers = [(sh.N, sh.K, sh.HD), (sh.N, sh.HD, sh.V)] if sh.depth == 2 else [(sh.N, sh.K, sh.V)]
    return layers * (2 if sh.flags["MOM"] else 1)


def _views(buf: Tensor, sh: _Shape) -> list[Tensor]:
    """The state parts (:func:`_part_shapes`) of one flat state row ``buf [P]`` as views."""
    out, off = [], 0
    for shape in _part_shapes(sh):
        size = shape[0] * shape[1] * shape[2]
        out.append(buf[off:off + size].view(shape))
        off += size
    return out


def _per_chunk(*tensors: Tensor) -> list[tuple[Tensor, ...]]:
    """``(x_i for x in tensors)`` for every chunk i: views along dim 0, one unbind a tensor."""
    return list(zip(*(t.unbind(0) for t in tensors)))


def _with_momentum(parts: list[Tensor], sh: _Shape) -> list[Tensor]:
    """``W1, W2, Z1, Z2`` (depth 1: ``W, Z``): without momentum the Z slots repeat the W ones
    (the kernels neither read nor write them then: MOM=False)."""
    return list(parts) if sh.flags["MOM"] else list(parts) * 2


@dataclass(frozen=True)
class Fold:
    """One chunk's read-out factors, from which the backward kernels form the read-out's
    gradient on the chunk-start state tile by tile (FOLD=1; ``fused.py``): per layer the query
    inputs ``xs[l] [N, C, d_in]`` and the output gradient ``dos[l] [N, C, d_out]``, and the
    per-token scales ``g`` (γ) and ``e`` ``[N, C]`` (``e`` repeats ``g`` without momentum)."""

    xs: tuple[Tensor, ...]
    dos: tuple[Tensor, ...]
    g: Tensor
    e: Tensor


def _readout_grad_args(extra: list[Tensor] | Fold, k: Tensor, sh: _Shape) -> tuple[list, list, int]:
    """The backward kernels' read-out arguments: the state-shaped gradients ``x_*`` (one per
    state part, as autograd delivers them) or the chunk's :class:`Fold`; placeholders (``k``,
    never read) for the other kind, and the FOLD flag."""
    if isinstance(extra, Fold):
        factors = [t for pair in zip(extra.xs, extra.dos) for t in pair] + [extra.g, extra.e]
        return [k] * (2 * sh.depth), factors, 1
    return _with_momentum(extra, sh), [k] * (2 * sh.depth + 2), 0


def _forward_chunk_linear(k: Tensor, v: Tensor, state: list[Tensor], new: list[Tensor], coef: tuple,
                          out: tuple, y_part: Tensor, sh: _Shape) -> None:
    """One chunk of a depth-1 memory: ``y0, dz`` into ``out`` and the chunk-end state into ``new``."""
    t, f = sh.tiles, sh.flags
    w, z = _with_momentum(state, sh)
    wn, zn = _with_momentum(new, sh)
    gam, e, mom, dl, zl, delta = coef
    y0, dz = out[3:]
    _launch(sh, _linear_keys_kernel, (sh.N,), k, w, y_part, sh.C, sh.K, sh.V, BC=t["BC"],
            BK=t["BK"], BV=t["BV"], PREC=sh.prec)
    _launch(sh, _bias_kernel, bias_grid(sh.N, sh.C), y_part, k, v, delta, y0, dz, 1, sh.C, sh.V,
            NORM_EPS, sh.bp, BV=t["BV"], NORM=f["NORM"], RES=f["RES"], BIAS=f["BIAS"])
    _launch(sh, _linear_update_kernel, (sh.N, triton.cdiv(sh.V, t["BVU"])),
            k, dz, w, z, gam, e, mom, dl, zl, wn, zn, sh.C, sh.K, sh.V, BC=t["BC"], BK=t["BK"],
            BVU=t["BVU"], MOM=f["MOM"], PREC=sh.prec)


def _forward_keys(k: Tensor, state: list[Tensor], out: tuple, y_part: Tensor, sh: _Shape) -> None:
    """The first chunk's keys forward (``h, a`` into ``out``, the shares of y0 into ``y_part``);
    every later chunk's runs inside the previous chunk's update kernel."""
    w1, w2 = state[:2]
    h, a = out[:2]
    _launch(sh, _keys_kernel, sh.hidden_grid, k, w1, w2, h, a, y_part, sh.C, sh.K, sh.HD, sh.V,
            **sh.tiles, ACT=sh.flags["ACT"], PREC=sh.prec)


def _forward_chunk(k: Tensor, v: Tensor, state: list[Tensor], new: list[Tensor], coef: tuple,
                   out: tuple, y_part: Tensor, sh: _Shape, following: tuple | None = None) -> None:
    """One chunk, its keys already forward (:func:`_forward_keys`): ``d1, y0, dz`` into ``out``
    and the chunk-end state into ``new``; with ``following = (k, out)`` of the next chunk, also
    that chunk's keys forward through the new state."""
    if sh.depth == 1:
        return _forward_chunk_linear(k, v, state, new, coef, out, y_part, sh)
    t, f = sh.tiles, sh.flags
    w1, w2, z1, z2 = _with_momentum(state, sh)
    w1n, w2n, z1n, z2n = _with_momentum(new, sh)
    gam, e, mom, dl, zl, delta = coef
    h, a, d1, y0, dz = out
    # the next chunk's keys and activations (placeholders, unread, without one)
    k_next, h_next, a_next = (following[0], *following[1][:2]) if following else (k, h, a)
    _launch(sh, _bias_kernel, bias_grid(sh.N, sh.C), y_part, k, v, delta, y0, dz, sh.NJ, sh.C,
            sh.V, NORM_EPS, sh.bp, BV=t["BV"], NORM=f["NORM"], RES=f["RES"], BIAS=f["BIAS"])
    _launch(sh, _update_kernel, sh.hidden_grid, k, h, a, dz, w1, w2, z1, z2, gam, e, mom, dl, zl, d1,
            w1n, w2n, z1n, z2n, k_next, h_next, a_next, y_part, sh.C, sh.K, sh.HD, sh.V, **t,
            SUB=sh.sub, ACT=f["ACT"], MOM=f["MOM"], NEXT=following is not None, PREC=sh.prec)


@dataclass
class _Scratch:
    """Per-chunk work buffers of the backward, allocated once and reused by every chunk."""

    ga: Tensor  # [N, C, HD] partial da
    gh: Tensor  # [N, C, HD] partial dh
    t: Tensor  # [N, C, HD]
    gk: Tensor  # [N, NJ, C, K] per-block dk (depth 1; depth 2 keeps every chunk's, see backward)
    gdz: Tensor  # [N, NJ, C, V] per-block d(dz)
    g_y0: Tensor  # [N, C, V]
    gk_res: Tensor  # [N, C, K] the residual's dk (depth 1)

    @staticmethod
    def make(sh: _Shape, like: Tensor) -> "_Scratch":
        new = lambda *s: torch.empty(*s, device=like.device, dtype=like.dtype)  # noqa: E731
        hd = sh.HD if sh.depth == 2 else 0  # the hidden-layer buffers: none at depth 1
        nk = 0 if sh.depth == 2 else sh.N  # dk partials: all chunks' at once at depth 2
        return _Scratch(new(sh.N, sh.C, hd), new(sh.N, sh.C, hd), new(sh.N, sh.C, hd),
                        new(nk, sh.NJ, sh.C, sh.K), new(sh.N, sh.NJ, sh.C, sh.V),
                        new(sh.N, sh.C, sh.V), new(nk, sh.C, sh.K))


def _backward_chunk_linear(k: Tensor, v: Tensor, state: list[Tensor], coef: tuple, acts: tuple,
                           grads: tuple, g_new: list[Tensor], g_extra: list[Tensor] | Fold,
                           g_state: list[Tensor], outs: tuple, buf: _Scratch, sh: _Shape) -> None:
    """:func:`_backward_chunk` for a depth-1 memory (``_step_linear.py``); ``grads``: ddz."""
    t, f = sh.tiles, sh.flags
    w, z = _with_momentum(state, sh)
    g_wn, g_zn = _with_momentum(g_new, sh)
    g_w, g_z = _with_momentum(g_state, sh)
    (x_w, x_z), factors, fold = _readout_grad_args(g_extra, k, sh)
    gam, e, mom, dl, zl, delta = coef
    y0, dz = acts[3:]
    (g_dz,) = grads
    g_k, g_v, g_delta, scal_part, gdl_part, gzl_part = outs
    _launch(sh, _linear_bwd_update_kernel, (sh.N,),
            k, dz, w, z, gam, e, mom, dl, zl, g_wn, g_zn, x_w, x_z, *factors, g_w, g_z, buf.gk,
            buf.gdz, gdl_part, gzl_part, scal_part, sh.C, sh.K, sh.V, BC=t["BC"], BK=t["BK"],
            BVU=t["BVU"], MOM=f["MOM"], FOLD=fold, PREC=sh.prec,
            num_warps=8, num_stages=1)  # one stage: 4 dots a value block (sm_90 fit)
    gk_res = buf.gk_res if f["RES"] else g_v  # written only with the residual
    _launch(sh, _bwd_bias_kernel, bias_grid(sh.N, sh.C), buf.gdz, g_dz, y0, k, v, delta, buf.g_y0,
            g_v, gk_res, g_delta, 1, sh.C, sh.V, NORM_EPS, sh.bp, BV=t["BV"], NORM=f["NORM"],
            RES=f["RES"], BIAS=f["BIAS"])
    _launch(sh, _linear_bwd_keys_kernel, (sh.N,), k, w, buf.g_y0, g_w, buf.gk, buf.gk_res, g_k,
            sh.C, sh.K, sh.V, BC=t["BC"], BK=t["BK"], BVU=t["BVU"], RES=f["RES"], PREC=sh.prec,
            num_warps=8, num_stages=1)


def _backward_chunk(k: Tensor, v: Tensor, state: list[Tensor], coef: tuple, acts: tuple,
                    grads: tuple, g_new: list[Tensor], g_extra: list[Tensor] | Fold,
                    g_state: list[Tensor], outs: tuple, buf: _Scratch, sh: _Shape,
                    later: tuple | None = None) -> None:
    """One chunk in reverse: from the gradients of its outputs (``grads``: da, dd1, ddz), of its
    end state (``g_new``) and of its start state from elsewhere (``g_extra``: the read-out's),
    or its read-out factors (:class:`Fold`), the whole gradient of its start state (``g_state``) and those of k, v and the coefficient
    rows (``outs``: dk, dv, the huber threshold's gradient, and the per-block partials of
    dγ/de/dm, ddl, dzl; at depth 2 dk as per-hidden-block partials, followed by the residual's
    share of dk, both summed by the caller after the last chunk).

    Depth 2 leaves the keys' backward of the chunk to the next call (``later``: that chunk's k,
    h, a, W1, W2 and dk partials, :func:`_keys_args`), whose hidden kernel runs it first, or to
    :func:`_backward_keys` after the first chunk; ``g_new`` then still lacks it."""
    if sh.depth == 1:
        return _backward_chunk_linear(k, v, state, coef, acts, grads, g_new, g_extra, g_state, outs,
                                      buf, sh)
    t, f = sh.tiles, sh.flags
    w1, w2, z1, z2 = _with_momentum(state, sh)
    g_w1n, g_w2n, g_z1n, g_z2n = _with_momentum(g_new, sh)
    g_w1, g_w2, g_z1, g_z2 = _with_momentum(g_state, sh)
    x_parts, factors, fold = _readout_grad_args(g_extra, k, sh)
    gam, e, mom, dl, zl, delta = coef
    h, a, d1, y0, dz = acts
    g_a, g_d1, g_dz = grads
    gk_part, g_v, g_delta, scal_part, gdl_part, gzl_part, gk_res = outs
    lk, lh, la, lw1, lw2, lk_part = later or (k, h, a, w1, w2, gk_part)  # unread without LATER
    _launch(sh, _bwd_hidden_kernel, sh.hidden_grid,
            k, h, a, d1, dz, w1, w2, z1, z2, gam, e, mom, dl, zl, g_a, g_d1, g_w1n, g_w2n, g_z1n,
            g_z2n, *x_parts, *factors, g_w1, g_w2, g_z1, g_z2, buf.ga, buf.gh, buf.t, gk_part,
            buf.gdz, gdl_part, gzl_part, scal_part, lk, lh, la, lw1, lw2, buf.g_y0, lk_part,
            sh.C, sh.K, sh.HD, sh.V, **t, SUB=sh.sub, ACT=f["ACT"], MOM=f["MOM"], FOLD=fold,
            LATER=later is not None, PREC=sh.prec)
    _launch(sh, _bwd_bias_kernel, bias_grid(sh.N, sh.C), buf.gdz, g_dz, y0, k, v, delta, buf.g_y0,
            g_v, gk_res, g_delta, sh.NJ, sh.C, sh.V, NORM_EPS, sh.bp, BV=t["BV"], NORM=f["NORM"],
            RES=f["RES"], BIAS=f["BIAS"])


def _keys_args(k: Tensor, state: list[Tensor], acts: tuple, outs: tuple) -> tuple[Tensor, ...]:
    """What a depth-2 chunk's keys backward takes besides the shared buffers: its k, h, a, W1,
    W2 and dk partials (``later`` of :func:`_backward_chunk`)."""
    return (k, acts[0], acts[1], state[0], state[1], outs[0])


def _backward_keys(later: tuple, g_state: list[Tensor], buf: _Scratch, sh: _Shape) -> None:
    """The first chunk's keys backward (depth 2), adding into its start state's gradient."""
    k, h, a, w1, w2, gk_part = later
    _launch(sh, _bwd_keys_kernel, sh.hidden_grid, k, h, a, w1, w2, buf.g_y0, buf.ga, buf.gh,
            g_state[0], g_state[1], gk_part, sh.C, sh.K, sh.HD, sh.V, **sh.tiles, SUB=sh.sub,
            ACT=sh.flags["ACT"], PREC=sh.prec)


def _dk_partials(g_k: Tensor, g_v: Tensor, sh: _Shape) -> tuple[Tensor, Tensor]:
    """Where the backward kernels write dk. Depth 1 assembles it in its kernel: ``(g_k, g_k)``.
    Depth 2 writes per-hidden-block partials ``[n, N, NJ, C, K]`` and the residual's share
    ``[n, N, C, K]`` (``g_v``, never written, without a residual) for every chunk, summed once
    after the loop instead of one reduction launch per chunk."""
    if sh.depth == 1:
        return g_k, g_k
    n = g_k.shape[0]
    part = g_k.new_empty(n, sh.N, sh.NJ, sh.C, sh.K)
    return part, (g_k.new_empty(n, sh.N, sh.C, sh.K) if sh.flags["RES"] else g_v)


@dataclass
class LoopTape:
    """What the chunk loop's forward keeps for its backward (chunk-major, float32): the inputs
    k ``[n, N, C, K]``, v ``[n, N, C, V]``, the chunk-end coefficient rows (γ, e, m ``[n, N]``;
    dl, zl ``[n, N, C]``) and huber thresholds ``[n, N, C]``, the activations h, a, d1 ``[n, N,
    C, HD]`` (empty at depth 1), y0, dz ``[n, N, C, V]``, and per state part (W1, W2(, Z1, Z2))
    its ``[n + 1, N, d_in, d_out]`` buffer of chunk-start states (row n: the final state)."""

    k: Tensor
    v: Tensor
    coefs: tuple[Tensor, ...]  # gam, e, mom, dl, zl, delta
    acts: tuple[Tensor, ...]  # h, a, d1, y0, dz
    states: list[Tensor]
    sh: _Shape

    def tensors(self) -> list[Tensor]:
        """Everything, for ``ctx.save_for_backward``."""
        return [self.k, self.v, *self.coefs, *self.acts, *self.states]

    @staticmethod
    def restore(saved: tuple[Tensor, ...], sh: _Shape) -> "LoopTape":
        """The tape from :meth:`tensors`' order (as ``ctx.saved_tensors`` returns it)."""
        k, v, *rest = saved
        return LoopTape(k, v, tuple(rest[:6]), tuple(rest[6:11]), list(rest[11:]), sh)

    @property
    def outputs(self) -> tuple[Tensor, ...]:
        """The per-token factors the read-out takes: a, d1, dz (depth 1: dz)."""
        h, a, d1, y0, dz = self.acts
        return (a, d1, dz) if self.sh.depth == 2 else (dz,)


def loop_forward(k: Tensor, v: Tensor, s0: Tensor, coefs: tuple[Tensor, ...], sh: _Shape) -> LoopTape:
    """Phase 1 over all chunks (no autograd): k, v, the coefficient rows as in
    :class:`LoopTape`, the initial state row ``s0 [P]``."""
    n = k.shape[0]
    new = lambda *s: torch.empty(*s, device=k.device, dtype=k.dtype)  # noqa: E731
    hd = sh.HD if sh.depth == 2 else 0  # no hidden layer at depth 1
    h, a, d1 = (new(n, sh.N, sh.C, hd) for _ in range(3))
    y0, dz = new(n, sh.N, sh.C, sh.V), new(n, sh.N, sh.C, sh.V)
    states = [new(n + 1, *shape) for shape in _part_shapes(sh)]  # chunk-start states per part
    for part, first in zip(states, _views(s0, sh)):
        part[0] = first
    y_part = new(sh.N, sh.NJ, sh.C, sh.V)
    # every per-chunk view made up front (a few unbinds): the loop then only launches
    ks, vs = k.unbind(0), v.unbind(0)
    per_coef, per_act = _per_chunk(*coefs), _per_chunk(h, a, d1, y0, dz)
    rows = _per_chunk(*states)  # [n + 1] tuples of state parts
    if sh.depth == 2 and n:
        _forward_keys(ks[0], rows[0], per_act[0], y_part, sh)
    for i in range(n):
        following = (ks[i + 1], per_act[i + 1]) if i + 1 < n else None
        _forward_chunk(ks[i], vs[i], rows[i], rows[i + 1], per_coef[i], per_act[i], y_part, sh, following)
    return LoopTape(k, v, coefs, (h, a, d1, y0, dz), states, sh)


def loop_backward(tape: LoopTape, g_outs: list[Tensor], extra: list, g_final: list[Tensor]
                  ) -> tuple[Tensor, ...]:
    """The loop in reverse. ``g_outs``: gradients of :attr:`LoopTape.outputs` ``[n, N, C, ·]``;
    ``extra``: per chunk, the read-out's gradient on its start state (the state parts, or a
    :class:`Fold`); ``g_final``: per part the final state's gradient. Returns the gradients of
    k, v, s0, γ, e, m, dl, zl, delta (None where the configuration has no such input)."""
    k, v, sh = tape.k, tape.v, tape.sh
    n = k.shape[0]
    g_k, g_v, g_delta = torch.empty_like(k), torch.empty_like(v), torch.empty_like(tape.coefs[5])
    new = lambda *s: torch.empty(*s, device=k.device, dtype=k.dtype)  # noqa: E731
    # every entry is written (the momentum ones only with MOM, and then they are returned)
    scal, gdl, gzl = new(n, sh.N, sh.NJ, 3), new(n, sh.N, sh.NJ, sh.C), new(n, sh.N, sh.NJ, sh.C)
    buf = _Scratch.make(sh, k)
    g_end = torch.cat([g.reshape(-1) for g in g_final])  # [P]: the final state's
    g_start = torch.empty_like(g_end)
    ends, starts = _views(g_end, sh), _views(g_start, sh)  # swapped with the buffers
    ks, vs, coefs = k.unbind(0), v.unbind(0), _per_chunk(*tape.coefs)
    acts, g_acts, rows = _per_chunk(*tape.acts), _per_chunk(*g_outs), _per_chunk(*tape.states)
    gk_part, gk_res = _dk_partials(g_k, g_v, sh)
    outs = _per_chunk(gk_part, g_v, g_delta, scal, gdl, gzl, *([gk_res] if sh.depth == 2 else []))
    later = None  # depth 2: the chunk whose keys backward runs in the next hidden kernel
    for i in reversed(range(n)):
        _backward_chunk(ks[i], vs[i], rows[i], coefs[i], acts[i], g_acts[i], ends, extra[i],
                        starts, outs[i], buf, sh, later)
        g_end, g_start, ends, starts = g_start, g_end, starts, ends
        if sh.depth == 2:
            later = _keys_args(ks[i], rows[i], acts[i], outs[i])
    if later is not None:
        _backward_keys(later, ends, buf, sh)
    if sh.depth == 2:  # dk: one sum over the hidden blocks (and the residual) for all chunks
        torch.sum(gk_part, 2, out=g_k)
        if sh.flags["RES"]:
            g_k += gk_res
    s = scal.sum(2)  # [n, N, 3]
    mom_on, huber = sh.flags["MOM"], sh.flags["BIAS"] == BIAS_CODES["huber"]
    return (g_k, g_v, g_end, s[..., 0], s[..., 1] if mom_on else None,
            s[..., 2] if mom_on else None, gdl.sum(2), gzl.sum(2) if mom_on else None,
            g_delta if huber else None)


class _FusedLoop(torch.autograd.Function):
    """Phase 1 over all chunks on chunk-major float32 tensors (:class:`LoopTape`: k, v, the
    initial state row ``s0 [P]``, the coefficient rows, the huber thresholds). Returns
    :attr:`LoopTape.outputs`, then per state part its chunk-start values ``[n, N, d_in,
    d_out]``, then per part its final value ``[N, d_in, d_out]`` (views of the part's ``[n + 1,
    N, d_in, d_out]`` buffer, which the read-out takes in place; each part's gradient arrives on
    its own and is added inside the backward kernel)."""

    @staticmethod
    def forward(ctx, k, v, s0, gam, e, mom, dl, zl, delta, sh):  # noqa: ANN001, ANN205
        tape = loop_forward(k, v, s0, (gam, e, mom, dl, zl, delta), sh)
        ctx.save_for_backward(*tape.tensors())
        ctx.sh = sh
        n = k.shape[0]
        return (*tape.outputs, *(part[:n] for part in tape.states),
                *(part[n] for part in tape.states))

    @staticmethod
    @once_differentiable  # the kernels' backward is not itself differentiable
    def backward(ctx, *grads):  # noqa: ANN001, ANN205
        tape = LoopTape.restore(ctx.saved_tensors, ctx.sh)
        n_outs = len(tape.outputs)
        g_outs = [g.contiguous() for g in grads[:n_outs]]  # da, dd1, ddz or ddz
        g_parts = grads[n_outs:]
        n_parts = len(g_parts) // 2
        g_starts = [g.contiguous() for g in g_parts[:n_parts]]  # [n, N, d_in, d_out] each
        extra = [list(x) for x in _per_chunk(*g_starts)]
        return (*loop_backward(tape, g_outs, extra, list(g_parts[n_parts:])), None)


def chunk_major(x: Tensor) -> Tensor:
    """``[B, H, n, ...]`` -> contiguous ``[n, B·H, ...]``."""
    return x.movedim(2, 0).flatten(1, 2).contiguous()


def loop_inputs(state: DeepMemoryState, kc: Tensor, vc: Tensor, dc: Tensor | None,
                table: dict[str, Tensor], cfg: DeepMemoryConfig, prec: str
                ) -> tuple[tuple[Tensor, ...], _Shape]:
    """The chunk loop's tensor arguments ``(k, v, s0, γ, e, m, dl, zl, delta)`` (chunk-major,
    :class:`LoopTape`'s order) and its launch shape, from kc ``[B, H, n, C, K]``, vc ``[B, H, n,
    C, V]``, the chunk-end coefficient rows ``table`` (``gam, e, mom`` ``[B, H, n]``; ``dmat,
    zmat`` ``[B, H, n, C]``) and the huber threshold ``dc [B, H, n, C]`` (None for the other
    biases). Where the configuration has no momentum or no huber threshold, detached
    placeholders stand in (the kernels never read them; they take no gradient)."""
    B, H = kc.shape[:2]
    parts = [p.reshape(B * H, *p.shape[2:]) for p in (*state.weights, *(state.momentum or ()))]
    rows = {name: chunk_major(t) for name, t in table.items()}
    k, v = chunk_major(kc), chunk_major(vc)  # [n, N, C, ·]
    mom_on = state.momentum is not None
    sh = _shape(k[0], v[0], parts[0], cfg, mom_on, prec)
    s0 = torch.cat([p.reshape(-1) for p in parts])  # [P]
    if mom_on:
        e, mom, zl = rows["e"], rows["mom"], rows["zmat"]
    else:
        e = mom = rows["gam"].detach()
        zl = rows["dmat"].detach()
    delta = chunk_major(dc) if cfg.bias == "huber" else rows["dmat"].detach()
    return (k, v, s0, rows["gam"], e, mom, rows["dmat"], zl, delta), sh


def fused_phase1(state: DeepMemoryState, kc: Tensor, vc: Tensor, dc: Tensor | None,
                 table: dict[str, Tensor], cfg: DeepMemoryConfig, prec: str = "ieee"):  # noqa: ANN201
    """``chunk_torch.loop_phase1`` by the fused loop (:func:`loop_inputs`' arguments). Returns
    the chunk-start weights and momenta per layer ``[n, B, H, d_in, d_out]``, the layer inputs
    and output errors per layer ``[n, B, H, C, d]`` (chunk-major views of the loop's buffers)
    and the final state."""
    B, H = kc.shape[:2]
    args, sh = loop_inputs(state, kc, vc, dc, table, cfg, prec)
    res = _FusedLoop.apply(*args, sh)
    L, mom_on = cfg.depth, state.momentum is not None
    n_outs, n_parts = (3 if L == 2 else 1), len(_part_shapes(sh))
    outs = [x.unflatten(1, (B, H)) for x in res[:n_outs]]  # [a, d1, dz] or [dz], [n, B, H, C, ·]
    per_chunk = [s.unflatten(1, (B, H)) for s in res[n_outs:n_outs + n_parts]]  # [n, B, H, ·, ·]
    final = [s.unflatten(0, (B, H)) for s in res[n_outs + n_parts:]]  # [B, H, d_in, d_out]
    kn = kc.movedim(2, 0)  # [n, B, H, C, K]
    ins = [kn, outs[0]] if L == 2 else [kn]
    return (per_chunk[:L], per_chunk[L:] if mom_on else None, ins, outs[-L:],
            DeepMemoryState(tuple(final[:L]), tuple(final[L:]) if mom_on else None))


def fused_step(state: DeepMemoryState, k: Tensor, v: Tensor, d: Tensor | None,
               row: dict[str, Tensor], cfg: DeepMemoryConfig, prec: str = "ieee"
               ) -> tuple[list[Tensor], list[Tensor], DeepMemoryState]:
    """One chunk through the fused loop, with ``chunk_torch._torch_step``'s contract (tests and
    compile checks): k ``[B, H, C, K]``, v ``[B, H, C, V]`` float32, state parts ``[B, H, d_in,
    d_out]``, ``row`` the chunk-end coefficients (``gam, e, mom`` ``[B, H]``; ``dmat, zmat``
    ``[B, H, C]``), ``d`` the huber threshold ``[B, H, C]`` (None for other biases). Returns
    ``(ins, deltas, new_state)``."""
    table = {name: t.unsqueeze(2) for name, t in row.items()}  # one chunk: [B, H, 1, ...]
    dc = d.unsqueeze(2) if d is not None else None
    _, _, ins, deltas, new = fused_phase1(state, k.unsqueeze(2), v.unsqueeze(2), dc, table, cfg, prec)
    return [x[0] for x in ins], [x[0] for x in deltas], new
