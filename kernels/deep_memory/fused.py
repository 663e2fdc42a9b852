"""The Triton backend's dual form as one autograd Function: the chunk loop and every layer's
read-out together, so that the read-out's gradient on the chunk-start states is never formed.

Split in two Functions (``step._FusedLoop`` then ``chunk._FusedReadout`` per layer), the
read-out's backward must hand autograd ``dW_0 = (γ X)^T dO`` and ``dZ_0 = (e X)^T dO`` for every
chunk: state-sized float32 tensors (``[n, B·H, d_in, d_out]`` per part, 2 GB at titans-pytorch's
benchmark shape), written once and read back once by the loop's backward. Here the read-out's
backward skips them (``DENSE=False``) and the loop's backward kernels form each state tile of
them from the chunk's factors (``X [C, d_in]``, ``dO [C, d_out]``, ``γ, e [C]``; ``step.Fold``)
where they add it, a ``[d_in, C] x [C, d_out]`` product on tiles they hold anyway.

forward: ``step.loop_forward`` (phase 1: chunk-start states, per-token factors), then layer by
layer ``chunk.readout_forward`` with the activation between (torch). backward: the read-outs
in reverse (``DENSE=False``), the activation's backward between them, then
``step.loop_backward`` with one ``Fold`` per chunk. Same numbers as the split path
(``tests/kernels/test_deep_memory_step.py``).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .chunk_torch import chunk_end_table, chunk_ends
from .config import DeepMemoryConfig
from .memory import DeepMemoryState, activation, activation_backward, finish_output
from .step import Fold, LoopTape, chunk_major, loop_backward, loop_forward, loop_inputs


def _flat(t: Tensor) -> Tensor:
    """``[n, N, ...]`` -> ``[n·N, ...]`` (the read-out's one chunk per row; a view)."""
    return t.flatten(0, 1)


class _Layers:
    """The read-out operands of every layer, from the loop's tape: layer l reads queries
    ``x_l`` with chunk-start weights ``W0[l]`` (momenta ``Z0[l]``), keys' inputs ``ins[l]`` and
    output errors ``errs[l]`` (all ``[n, N, ...]``)."""

    def __init__(self, tape: LoopTape) -> None:
        n, L = tape.k.shape[0], tape.sh.depth
        outs = tape.outputs  # (a, d1, dz) or (dz,)
        self.ins = [tape.k, outs[0]] if L == 2 else [tape.k]
        self.errs = list(outs[-L:])
        self.w0 = [s[:n] for s in tape.states[:L]]
        self.z0 = [s[:n] for s in tape.states[L:]] if tape.sh.flags["MOM"] else [None] * L


class _FusedDualForm(torch.autograd.Function):
    """Chunk-major float32 inputs: q, k ``[n, N, C, K]``, v ``[n, N, C, V]``, the initial state
    row ``s0 [P]``, the loop's chunk-end coefficient rows (γ, e, m ``[n, N]``; dl, zl, huber
    thresholds ``[n, N, C]``), the read-out's per-token γ, e ``[n, N, C]`` and ``D [n, N, C,
    C]``. Returns the last layer's raw output ``[n, N, C, V]`` and each state part's final
    value ``[N, d_in, d_out]``."""

    @staticmethod
    def forward(ctx, q, k, v, s0, gam, e, mom, dl, zl, delta, rg, re, dmat, sh, act):  # noqa: ANN001, ANN205
        tape = loop_forward(k, v, s0, (gam, e, mom, dl, zl, delta), sh)
        lay, mom_on = _Layers(tape), sh.flags["MOM"]
        n, N, C = q.shape[:3]
        xs, pre = [q], []  # each layer's queries; the activations' inputs
        for i in range(sh.depth):
            o = _readout(xs[i], lay, i, rg, re, dmat, mom_on, sh.prec).view(n, N, C, -1)
            if i < sh.depth - 1:
                pre.append(o)
                xs.append(activation(o, act))
        ctx.save_for_backward(*tape.tensors(), rg, re, dmat, *xs, *pre)
        ctx.sh, ctx.act, ctx.n_tape = sh, act, len(tape.tensors())
        return (o, *(part[n] for part in tape.states))

    @staticmethod
    @once_differentiable  # the kernels' backward is not itself differentiable
    def backward(ctx, d_out, *g_final):  # noqa: ANN001, ANN205
        sh, saved = ctx.sh, ctx.saved_tensors
        tape = LoopTape.restore(saved[:ctx.n_tape], sh)
        lay, mom_on, L = _Layers(tape), sh.flags["MOM"], sh.depth
        rg, re, dmat, *rest = saved[ctx.n_tape:]
        xs, pre = rest[:L], rest[L:]  # each layer's queries, the activations' inputs
        dos: list[Tensor] = [None] * L  # type: ignore[list-item]
        dos[-1] = d_out.contiguous()
        g_ins, g_errs, coef = [None] * L, [None] * L, None
        for i in reversed(range(L)):
            dx, dg, de, da, dd, du = _readout_grads(dos[i], xs[i], lay, i, rg, re, dmat, mom_on,
                                                    sh.prec)
            g_ins[i], g_errs[i] = da, du
            coef = (dg, de, dd) if coef is None else tuple(
                c + d if d is not None else None for c, d in zip(coef, (dg, de, dd)))
            if i > 0:
                dos[i - 1] = activation_backward(dx, pre[i - 1], ctx.act)
        g_outs = [g_ins[1], g_errs[0], g_errs[1]] if L == 2 else [g_errs[0]]
        folds = [Fold(xs=x, dos=d, g=g, e=e) for x, d, g, e in zip(  # e: γ without momentum
            zip(*(t.unbind(0) for t in xs)), zip(*(t.unbind(0) for t in dos)), rg.unbind(0),
            re.unbind(0))]
        g_k, *rest = loop_backward(tape, g_outs, folds, list(g_final))
        return (dx, g_k + g_ins[0], *rest, *coef, None, None)


def _operands(lay: _Layers, i: int, rg: Tensor, re: Tensor, dmat: Tensor, mom_on: bool
              ) -> tuple[Tensor | None, ...]:
    """Layer ``i``'s read-out operands after its queries, one chunk per row: ``w0, γ, z0, e,
    ins, D, errs`` (``z0 = e = None`` without momentum)."""
    mom = (_flat(lay.z0[i]), _flat(re)) if mom_on else (None, None)
    return (_flat(lay.w0[i]), _flat(rg), *mom, _flat(lay.ins[i]), _flat(dmat), _flat(lay.errs[i]))


def _readout(x: Tensor, lay: _Layers, i: int, rg: Tensor, re: Tensor, dmat: Tensor, mom_on: bool,
             prec: str) -> Tensor:
    """Layer ``i``'s read-out of queries ``x [n, N, C, d_in]``: ``[n·N, C, d_out]``."""
    from .chunk import readout_forward

    return readout_forward(_flat(x), *_operands(lay, i, rg, re, dmat, mom_on), prec)


def _readout_grads(do: Tensor, x: Tensor, lay: _Layers, i: int, rg: Tensor, re: Tensor,
                   dmat: Tensor, mom_on: bool, prec: str) -> tuple[Tensor | None, ...]:
    """Layer ``i``'s read-out backward without the state gradients: ``dx, dγ, de, d(ins),
    dD, d(errs)``, each shaped like its input ``[n, N, ...]`` (``de`` None without momentum)."""
    from .chunk import readout_backward

    dx, _, dg, _, de, da, dd, du = readout_backward(
        _flat(do), _flat(x), *_operands(lay, i, rg, re, dmat, mom_on), prec, dense=False)
    shaped = lambda g, like: g.view_as(like) if g is not None else None  # noqa: E731
    return (shaped(dx, x), shaped(dg, rg), shaped(de, re), shaped(da, lay.ins[i]),
            shaped(dd, dmat), shaped(du, lay.errs[i]))


def fused_dual_form(qc: Tensor, kc: Tensor, vc: Tensor, dc: Tensor | None, co: dict[str, Tensor],
                    T: int, state: DeepMemoryState, cfg: DeepMemoryConfig, prec: str = "ieee"
                    ) -> tuple[Tensor, DeepMemoryState]:
    """``chunk_torch._dual_form`` as one Function (module docstring): ``qc, kc [B, H, n, C, K]``,
    ``vc [B, H, n, C, V]``, ``co`` the intra-chunk coefficients (``dual_coefficients``), ``dc``
    the huber threshold (None for other biases). Returns ``o [B, H, n, C, V]`` and the final
    state."""
    B, H = kc.shape[:2]
    mom_on = state.momentum is not None
    table = chunk_end_table(co, chunk_ends(T, qc.shape[3], qc.shape[2]))
    args, sh = loop_inputs(state, kc, vc, dc, table, cfg, prec)  # k, v, s0, the rows, delta
    q, rg, dmat = chunk_major(qc), chunk_major(co["gam"]), chunk_major(co["dmat"])  # [n, N, ·]
    re = chunk_major(co["e"]) if mom_on else rg.detach()  # a placeholder without momentum
    out, *finals = _FusedDualForm.apply(q, *args, rg, re, dmat, sh, cfg.activation)
    L = cfg.depth
    final = [f.unflatten(0, (B, H)) for f in finals]  # [B, H, d_in, d_out]
    o = finish_output(out, q, cfg).unflatten(1, (B, H)).movedim(0, 2)  # [B, H, n, C, V]
    return o, DeepMemoryState(tuple(final[:L]), tuple(final[L:]) if mom_on else None)
