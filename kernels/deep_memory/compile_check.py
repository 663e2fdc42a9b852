"""Compile the deep-memory Triton kernels for sm_90 (H100) without a GPU.

Records the launches of the fused dual-form read-out (forward and backward) and of the
three-kernel chunk step (``step.py``), and the step form's keys and reads (``_steps_keys.py``, ``_steps_read.py``), at the shapes of the benchmark's Titans case — chunk 64
and 16, head dim 128, hidden 512, momentum (so the first layer reads ``[ΓX, eX]`` of width 256)
— and compiles each for sm_90, checking shared memory. Run it where TRITON_INTERPRET is unset:

    python -m mirasdsl.kernels.deep_memory.compile_check [--kernels _bwd_hidden,_update] [--precisions tf32]
"""
from __future__ import annotations

import argparse

import torch

from ..compile_check import KERNELS_HELP, Launch, emit, recording, wanted_kernels

# (chunk C, key width DK, value width DV) of each MLP layer's read-out (with momentum)
TITANS_LAYERS = [(C, dk, dv) for C in (64, 16) for dk, dv in ((128, 512), (512, 128))]


def record_launches(C: int, dk: int, dv: int, prec: str = "ieee") -> list[Launch]:
    """Run the fused read-out (with momentum) forward and backward once on CPU tensors with its
    kernels recorded."""
    from . import chunk

    with recording([(chunk, "_readout_fwd_kernel"), (chunk, "_readout_bwd_kernel")]) as log:
        n = 2
        leaf = lambda *s: torch.randn(*s, requires_grad=True)  # noqa: E731
        x, a = leaf(n, C, dk), leaf(n, C, dk)
        w0, z0 = leaf(n, dk, dv), leaf(n, dk, dv)
        gam, e = leaf(n, C), leaf(n, C)
        d, u = leaf(n, C, C), leaf(n, C, dv)
        chunk.readout_triton(x, w0, gam, z0, e, a, d, u, prec=prec).sum().backward()
    return log


def record_step_launches(C: int, prec: str = "ieee", D: int = 128, HD: int = 512,
                         bias: str = "l2", depth: int = 2) -> list[Launch]:
    """Run one fused chunk step (LayerNorm, residual, momentum, the given attentional bias and
    depth) on CPU tensors, kernels recorded."""
    from . import step
    from .chunk import dot_precision
    from .config import DeepMemoryConfig
    from .memory import DeepMemoryState

    names = [n for n in dir(step) if n.endswith("_kernel")]
    with recording([(step, n) for n in names]) as log:
        B, H = 1, 1
        extra = {"lp": {"p": 3.0}, "robust": {"robust_radius": 1.0}}.get(bias, {})
        cfg = DeepMemoryConfig(depth=depth, hidden=HD if depth == 2 else None, residual=True,
                               norm=True, momentum=True, chunk_size=C, bias=bias, **extra)
        # float32 tensors whatever ``prec``: the loop runs on the model's float32 accumulation
        # copies (half-precision models get "tf32x3" there, fused_step_supported)
        leaf = lambda *s: torch.randn(*s, requires_grad=True)  # noqa: E731
        k, v = leaf(B, H, C, D), leaf(B, H, C, D)
        w = (leaf(B, H, D, HD), leaf(B, H, HD, D)) if depth == 2 else (leaf(B, H, D, D),)
        row = {"gam": leaf(B, H), "e": leaf(B, H), "mom": leaf(B, H), "dmat": leaf(B, H, C),
               "zmat": leaf(B, H, C)}
        d = leaf(B, H, C) if bias == "huber" else None
        model_dtype = torch.float32 if prec == "ieee" else torch.bfloat16
        loop_prec = dot_precision(model_dtype, carried=True)  # what the loop of such a model gets
        ins, deltas, new = step.fused_step(DeepMemoryState(w, w), k, v, d, row, cfg, prec=loop_prec)
        outs = [*ins[1:], *deltas, *new.weights, *new.momentum]
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])  # values: not computed
    return log


def record_fused_launches(C: int, prec: str = "ieee", D: int = 128, HD: int = 512,
                          depth: int = 2) -> list[Launch]:
    """The fused dual form (``fused.py``: the read-out's backward without the state gradient,
    DENSE=False, the loop's backward forming it, FOLD=1, and the update kernel carrying the next
    chunk's keys forward, NEXT=True) for two chunks of one head at the Titans setting, forward
    and backward, kernels recorded (values not computed)."""
    from . import chunk, step
    from .config import DeepMemoryConfig

    names = [(step, n) for n in dir(step) if n.endswith("_kernel")]
    names += [(chunk, "_readout_fwd_kernel"), (chunk, "_readout_bwd_kernel")]
    with recording(names) as log:
        cfg = DeepMemoryConfig(depth=depth, hidden=HD if depth == 2 else None, residual=True,
                               norm=True, momentum=True, chunk_size=C)
        # the model's dtype picks the dot precision (bf16 -> tf32 read-outs, tf32x3 loop); the
        # loop itself runs on float32 accumulation copies
        dtype = torch.float32 if prec == "ieee" else torch.bfloat16
        leaf = lambda *s: torch.randn(*s, dtype=dtype, requires_grad=True)  # noqa: E731
        q, k, v = leaf(1, 2 * C, 1, D), leaf(1, 2 * C, 1, D), leaf(1, 2 * C, 1, D)
        w = (leaf(1, D, HD), leaf(1, HD, D)) if depth == 2 else (leaf(1, D, D),)
        eta, mu = leaf(1, 2 * C, 1), leaf(1, 2 * C, 1)
        o, _ = chunk.triton_deep_memory(q, k, v, eta.sigmoid(), w, cfg, mu=mu.sigmoid())
        o.sum().backward()
    picked = [x for x in log if x.kwargs.get("FOLD") == 1 or x.kwargs.get("DENSE") is False
              or x.kwargs.get("NEXT") is True]
    distinct: dict[tuple, Launch] = {}  # both chunks launch the same: compile each once
    for x in picked:
        args = tuple(tuple(a.shape) if isinstance(a, torch.Tensor) else a for a in x.args)
        distinct.setdefault((x.fn, args, tuple(sorted((k, str(v)) for k, v in x.kwargs.items()))), x)
    return list(distinct.values())


def record_read_launches(S: int, prec: str = "ieee", D: int = 128, HD: int = 512) -> list[Launch]:
    """The step form's Triton sums and reads (``_steps_read.py``) at titans-pytorch's setting
    (steps of S, LayerNorm, residual, momentum), forward and backward, kernels recorded (values
    not computed)."""
    from . import _steps_read

    names = ("_read_fwd_kernel", "_read_bwd_kernel", "_combine_bwd_kernel")
    with recording([(_steps_read, n) for n in names]) as log:
        N = 2
        leaf = lambda *s: torch.randn(*s, requires_grad=True)  # noqa: E731
        x = leaf(1, N + 1, S, D)
        w1, z1, w2, z2 = leaf(1, D, HD), leaf(1, D, HD), leaf(1, HD, D), leaf(1, HD, D)
        g1, g2 = leaf(1, N, D, HD), leaf(1, N, HD, D)
        dmat, gam, e = leaf(1, N, N), leaf(1, N), leaf(1, N)
        o, _, _ = _steps_read.StepsRead.apply(x, w1, z1, w2, z2, g1, g2, dmat, gam, e, "gelu", True, True, prec)
        o.sum().backward()
    return log


def record_keys_launches(S: int, prec: str = "ieee", D: int = 128, HD: int = 512) -> list[Launch]:
    """The step form's Triton keys (``_steps_keys.py``) at titans-pytorch's setting (steps of S,
    LayerNorm, residual, l2 bias), forward and backward, kernels recorded (values not computed)."""
    from . import _steps_keys

    names = ("_keys_fwd_kernel", "_keys_bwd_rows_kernel", "_keys_bwd_hidden_kernel")
    with recording([(_steps_keys, n) for n in names]) as log:
        R = 2 * S
        leaf = lambda *s: torch.randn(*s, requires_grad=True)  # noqa: E731
        k, v, eta, d = leaf(1, R, D), leaf(1, R, D), leaf(1, R), torch.ones(1, R)
        w1, w2 = leaf(1, D, HD), leaf(1, HD, D)
        g1, g2 = _steps_keys.StepKeys.apply(k, v, eta, d, w1, w2, S, "gelu", True, True, "l2", 0.0, prec)
        (g1.sum() + g2.sum()).backward()
    return log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", default="", help=KERNELS_HELP)
    parser.add_argument("--precisions", default="ieee,tf32", help="comma list of ieee (float32 models), tf32 (half)")
    a = parser.parse_args()
    wanted = wanted_kernels(a.kernels)
    for prec in a.precisions.split(","):
        if prec not in ("ieee", "tf32"):
            parser.error(f"--precisions: {prec!r} is not one of ieee, tf32")
    for prec in a.precisions.split(","):  # float32 models, half-precision models
        for C, dk, dv in TITANS_LAYERS:
            emit(f"C={C} MOM=1 DK={dk} DV={dv} {prec}", record_launches(C, dk, dv, prec), wanted)
        for C in (64, 16):
            emit(f"C={C} {prec} step", record_step_launches(C, prec), wanted)
        for C in (64, 16):
            emit(f"C={C} {prec} linear", record_step_launches(C, prec, depth=1), wanted)
        for C, depth in ((64, 2), (64, 1)):  # chunk 16 needs less shared memory
            emit(f"C={C} {prec} fused depth {depth}", record_fused_launches(C, prec, depth=depth), wanted)
        for S in (64, 16):
            emit(f"S={S} {prec} steps read", record_read_launches(S, prec), wanted)
            emit(f"S={S} {prec} steps keys", record_keys_launches(S, prec), wanted)
        for bias in ("dot", "lp", "huber", "robust"):  # only the two bias kernels change with it
            launches = [x for x in record_step_launches(64, prec, bias=bias)
                        if getattr(x.fn, "fn", x.fn).__name__.endswith("bias_kernel")]
            emit(f"C=64 {prec} bias={bias}", launches, wanted)


if __name__ == "__main__":
    main()
