"""Bytes each Triton kernel loads and stores in one forward + backward, counted on the CPU.

The kernels run in Triton's interpreter; every load and store they issue is counted (the
elements where its mask holds × the element size), per kernel, at B = H = 1 and T, 2T tokens,
and scaled to a benchmark shape: the part that grows with tokens by its tokens × heads, the
rest (weights, set-up) by its heads. ATen ops between the kernels count the bytes of their
tensors (inputs read, outputs written). Deep memory (``deep_memory_c64``, ``_c16``) runs at
titans-pytorch's benchmark setting (``cases.ours_deep_memory``). This is a
model of HBM traffic, not a measurement: re-reads that the GPU's L2 would serve are counted, so
it bounds DRAM traffic from above, as the memory floor (every input and output touched once)
bounds it from below. No GPU needed; slow-ish (the interpreter), hence a small counting shape.

    python benchmarks/traffic.py [--families delta,gla,deep_memory_c64] [--T 128] [--shape S]
                                 [--value-block 64|128] [--by-tensor]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections import defaultdict
from typing import Callable, Iterable, Iterator

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases  # noqa: E402  (this folder)

FAMILIES = ("simple_gla", "gla", "delta", "gated_delta", "kda", "deep_memory_c64", "deep_memory_c16")
DEEP_CHUNKS = {"deep_memory_c64": 64, "deep_memory_c16": 16}
_SKIP = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach",
         "alias", "lift_fresh", "_unsafe_view", "_reshape_alias"}
_WRITE_ONLY = {"zeros", "zeros_like", "new_zeros", "ones", "ones_like", "new_ones", "full",
               "full_like", "new_full", "fill_", "zero_", "arange"}  # inputs give only a shape


class Tally:
    """Bytes loaded and stored per kernel (or ``torch:<op>``) in the current phase; with
    ``by_tensor``, per kernel and tensor argument (``kernel.arg``)."""

    def __init__(self, by_tensor: bool = False) -> None:
        self.rows: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
        self.phase, self.kernel, self.by_tensor = "fwd", None, by_tensor
        self.ranges: list[tuple[int, int, str]] = []  # the running kernel's tensor arguments

    def name_of(self, ptrs, live) -> str:  # noqa: ANN001
        """The running kernel, or ``kernel.arg`` for the argument the pointers fall in."""
        if not self.by_tensor or not live.any():
            return self.kernel
        addr = int(ptrs.data[live].flat[0])
        args = [n for lo, hi, n in self.ranges if lo <= addr < hi]  # aliases share storage
        return f"{self.kernel}.{'|'.join(args) or '?'}"

    def add(self, name: str, loaded: float, stored: float, call: bool = False) -> None:
        row = self.rows[(self.phase, name)]
        row[0] += int(call)
        row[1] += loaded
        row[2] += stored


def _itemsize(tl_dtype) -> int:  # noqa: ANN001
    return max(1, tl_dtype.primitive_bitwidth // 8)


@contextlib.contextmanager
def counting(tally: Tally) -> Iterator[Tally]:
    """Count the interpreter's loads and stores, attributed to the running kernel, and ATen ops
    between kernels, while the block runs."""
    from triton.runtime import interpreter as itp

    import mirasdsl.kernels  # noqa: F401  (its interpreter fixes first)

    builder, grid = itp.InterpreterBuilder, itp.GridExecutor
    load0, store0, run0 = builder.create_masked_load, builder.create_masked_store, grid.__call__

    def measure(ptrs, mask) -> tuple[str, int]:  # noqa: ANN001
        live = np.broadcast_to(mask.data, ptrs.data.shape)
        return tally.name_of(ptrs, live), int(np.count_nonzero(live)) * _itemsize(ptrs.get_element_ty())

    def load(self, ptrs, mask, other, *rest):  # noqa: ANN001, ANN202
        name, n = measure(ptrs, mask)
        tally.add(name, n, 0.0)
        return load0(self, ptrs, mask, other, *rest)

    def store(self, ptrs, value, mask, *rest):  # noqa: ANN001, ANN202
        name, n = measure(ptrs, mask)
        tally.add(name, 0.0, n)
        return store0(self, ptrs, value, mask, *rest)

    def run(self, *args, **kwargs):  # noqa: ANN001, ANN202
        tally.kernel = self.fn.__name__
        named = {**dict(zip(self.arg_names, args)), **kwargs}
        tally.ranges = [(t.untyped_storage().data_ptr(),
                         t.untyped_storage().data_ptr() + t.untyped_storage().nbytes(), n)
                        for n, t in named.items() if isinstance(t, torch.Tensor)]
        tally.add(tally.kernel, 0.0, 0.0, call=True)
        try:
            return run0(self, *args, **kwargs)
        finally:
            tally.kernel = None

    builder.create_masked_load, builder.create_masked_store, grid.__call__ = load, store, run
    try:
        with TorchBytes(tally):
            yield tally
    finally:
        builder.create_masked_load, builder.create_masked_store, grid.__call__ = load0, store0, run0


class TorchBytes(TorchDispatchMode):
    """ATen ops outside the Triton kernels: bytes of their tensor inputs and outputs."""

    def __init__(self, tally: Tally) -> None:
        super().__init__()
        self.tally = tally

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if self.tally.kernel is None and not func.is_view and name not in _SKIP:
            size = lambda xs: _nbytes(t for t in xs if isinstance(t, torch.Tensor))  # noqa: E731
            outs = out if isinstance(out, (tuple, list)) else [out]
            read = 0 if name in _WRITE_ONLY else size(args)
            self.tally.add(f"torch:{name}", read, size(outs), call=True)
        return out


def call_for(kind: str, x: cases.Inputs) -> Callable[[], torch.Tensor]:
    """Our Triton entry point for a family (called directly: the dispatcher would pick the
    PyTorch form on the CPU)."""
    if kind in ("simple_gla", "gla"):
        from mirasdsl.kernels.gla.chunk import chunk_gla

        return lambda: chunk_gla(x["q"], x["k"], x["v"], x["g"])[0]
    from mirasdsl.kernels.delta.chunk import chunk_delta_rule

    return lambda: chunk_delta_rule(x["q"], x["k"], x["v"], x["beta"], x.get("g"))[0]


def _nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def prepare(kind: str, shape: cases.Shape) -> tuple[Callable[[], torch.Tensor], int, int]:
    """Our call for ``kind`` at ``shape``, the bytes of its inputs and of its output."""
    out = shape.B * shape.T * shape.H * shape.D * 2  # bf16, shaped like v
    if kind.startswith("deep_memory"):
        os.environ["MIRAS_KERNELS"] = "triton"  # the dispatcher's choice (interpreted here)
        prep = cases.ours_deep_memory(shape, DEEP_CHUNKS[kind])
        return prep.fn, _nbytes(prep.leaves), out
    x = cases.make_inputs(shape, kind)
    return call_for(kind, x), _nbytes(x.values()), out


def count(kind: str, shape: cases.Shape, tally: Tally) -> tuple[int, int]:
    """One forward and backward of ``kind`` at ``shape`` under the tally; returns the bytes of
    the inputs and of the output."""
    fn, inputs, out = prepare(kind, shape)
    with counting(tally):
        tally.phase = "fwd"
        o = fn()
        o = o[0] if isinstance(o, tuple) else o  # (output, state) calls
        tally.phase = "set-up"  # the cotangent: not the op's traffic
        do = torch.randn_like(o)
        tally.phase = "bwd"
        o.backward(do)
    tally.rows = {k: v for k, v in tally.rows.items() if k[0] != "set-up"}
    return inputs, out


def at_target(kind: str, small_t: int, target: cases.Shape, by_tensor: bool = False
              ) -> tuple[dict, tuple[float, float]]:
    """Rows ``{(phase, kernel): [launches, loaded, stored]}`` and the floors (forward, forward +
    backward) at ``target``, from counts at T and 2T tokens (B = H = 1): the per-token part
    scales with the target's tokens × heads, the rest (weights, per-call set-up) with its heads,
    launches with its T."""
    one, two = Tally(by_tensor), Tally(by_tensor)
    io1 = count(kind, cases.Shape("count", 1, small_t, 1, target.D), one)
    io2 = count(kind, cases.Shape("count", 1, 2 * small_t, 1, target.D), two)
    tokens = target.B * target.T * target.H

    def scale(a: float, b: float) -> float:
        rate = (b - a) / small_t
        return rate * tokens + (a - rate * small_t) * target.H

    rows = {}
    for key in one.rows.keys() | two.rows.keys():
        (c1, l1, s1), (c2, l2, s2) = one.rows.get(key, [0, 0, 0]), two.rows.get(key, [0, 0, 0])
        calls = round(c1 + (c2 - c1) / small_t * (target.T - small_t))
        rows[key] = [calls, scale(l1, l2), scale(s1, s2)]
    (i1, o1), (i2, o2) = io1, io2
    return rows, (scale(i1 + o1, i2 + o2), scale(3 * i1 + 2 * o1, 3 * i2 + 2 * o2))


def report(kind: str, rows: dict, floors: tuple[float, float], target: str) -> None:
    """Markdown rows: per kernel and phase, GB loaded / stored at the target shape. Floors: the
    forward reads every input and writes o; the backward reads every input and dO and writes a
    gradient per input."""
    gb = 1e-9
    print(f"\n### {kind}: bytes per forward + backward at shape {target}\n")
    print("| phase | kernel | launches | loaded GB | stored GB |\n|---|---|---:|---:|---:|")
    totals: dict[str, float] = defaultdict(float)
    order = sorted(rows.items(), key=lambda r: (r[0][0] != "fwd", -sum(r[1][1:])))
    for (phase, name), (calls, ld, st) in order:
        totals[phase] += ld + st
        print(f"| {phase} | `{name}` | {calls} | {ld * gb:.3f} | {st * gb:.3f} |")
    f_fwd, f_all = floors
    both = totals["fwd"] + totals["bwd"]
    print(f"\n{kind}: forward {totals['fwd'] * gb:.2f} GB (floor {f_fwd * gb:.2f}, "
          f"{totals['fwd'] / f_fwd:.1f}x), forward + backward {both * gb:.2f} GB "
          f"(floor {f_all * gb:.2f}, {both / f_all:.1f}x)")


def force_value_block(bv: int) -> None:
    """Make the delta rule's kernels with a tuned value block run at ``bv`` (a candidate the
    GPU's autotuner may pick; the interpreter runs only the first)."""
    import triton

    from mirasdsl.kernels.delta import _tl_bwd, _tl_fwd

    from mirasdsl.kernels.gla import chunk as gla_chunk

    for tuner in (_tl_fwd.state_fwd_kernel, _tl_bwd.state_bwd_kernel, _tl_fwd.output_kernel):
        tuner.configs = [triton.Config({"BV": bv}, num_warps=4, num_stages=1)]
    gla_wide = (gla_chunk._fwd_o_kernel, gla_chunk._bwd_dv_kernel, gla_chunk._fwd_state_kernel,
                gla_chunk._bwd_state_kernel)
    for tuner in gla_wide:  # GLA's value tiles: 64 or 128
        tuner.configs = [triton.Config({"WIDE": int(bv > 64)}, num_warps=8, num_stages=1)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default="delta,gla", help=f"comma list of {', '.join(FAMILIES)}")
    p.add_argument("--T", type=int, default=128,
                   help="tokens counted (and twice that; B = H = 1, D as the shape; a multiple of 64)")
    p.add_argument("--shape", default="S", choices=sorted(cases.SHAPES))
    p.add_argument("--by-tensor", action="store_true",
                   help="one row per kernel and tensor argument (which buffers the bytes are)")
    p.add_argument("--value-block", type=int, choices=[32, 64, 128],
                   help="run the tuned value blocks (delta: state passes, output; GLA: output, dv, "
                        "64 or 128) at this size (default: each kernel's first candidate, as the "
                        "interpreter does)")
    a = p.parse_args()
    bad = [f for f in a.families.split(",") if f not in FAMILIES]
    if bad:
        p.error(f"unknown families {bad}; allowed: {', '.join(FAMILIES)}")
    cases.set_device("cpu")
    if a.value_block:
        force_value_block(a.value_block)
    for kind in a.families.split(","):
        deep = kind.startswith("deep_memory")
        target = cases.MEMORY_SHAPE if deep else cases.SHAPES[a.shape]
        rows, floors = at_target(kind, a.T, target, a.by_tensor)
        report(kind, rows, floors, "of titans-pytorch's benchmark (B=4, T=4096, 8 heads of 128)"
               if deep else a.shape)


if __name__ == "__main__":
    main()
