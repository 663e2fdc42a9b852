"""Bytes each Triton kernel loads and stores in one forward + backward, counted on the CPU.

The kernels run in Triton's interpreter; every load and store they issue is counted (the
elements where its mask holds × the element size), per kernel, at B = H = 1 and T, 2T tokens,
and scaled to a benchmark shape: the part that grows with tokens by its tokens × heads, the
rest (weights, set-up) by its heads. ATen ops between the kernels count the bytes of their
tensors (inputs read, outputs written). Deep memory (``deep_memory_c64``, ``_c16``) runs at
titans-pytorch's benchmark setting (``cases.ours_deep_memory``). This is a
model of HBM traffic, not a measurement: the counted bytes include re-reads that the GPU's L1/L2
would serve, so they bound DRAM traffic from above, as the memory floor (every input and output
touched once) bounds it from below. The "distinct" bytes count each address once per kernel
launch (re-reads within a launch served by the caches, nothing kept between launches): closer
to DRAM traffic, but not a bound either way (a launch's working set may not fit the L2; a
buffer just written by one launch may still be in it for the next). No GPU needed; slow-ish
(the interpreter), hence a small counting shape.

With ``--impl ours,fla`` fla's chunk kernels are counted the same way (configured as on an
H100, ``interpret_peers.py``) and a last table gives fla's bytes over ours per family.
``--configs least`` runs, for every autotuned kernel of either side, the candidate with the
fewest counted bytes (the trials are not counted; distinct bytes would not tell tile sizes
apart): a lower bound over each side's tuning space, where the default runs each side's first
candidate.

    python benchmarks/traffic.py [--families delta,gla,deep_memory_c64] [--T 128] [--shape S]
                                 [--impl ours,fla] [--configs first|least]
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
from harness import Unavailable  # noqa: E402
import interpret_peers  # noqa: E402

IMPLS = ("ours", "fla", "titans")
FAMILIES = ("simple_gla", "gla", "delta", "gated_delta", "kda", "deep_memory_c64", "deep_memory_c16",
            "deep_memory_steps_c64", "deep_memory_steps_c16")
DEEP_CHUNKS = {"deep_memory_c64": 64, "deep_memory_c16": 16,
               "deep_memory_steps_c64": 64, "deep_memory_steps_c16": 16}
_SKIP = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach",
         "alias", "lift_fresh", "_unsafe_view", "_reshape_alias"}
_WRITE_ONLY = {"zeros", "zeros_like", "new_zeros", "ones", "ones_like", "new_ones", "full",
               "full_like", "new_full", "fill_", "zero_", "arange"}  # inputs give only a shape


class Tally:
    """Per kernel (or ``torch:<op>``) in the current phase, with ``by_tensor`` per kernel and
    tensor argument (``kernel.arg``): ``[launches, loaded, stored, loaded distinct, stored
    distinct]`` bytes. "Distinct" counts each address once per launch (a re-read within one
    kernel launch is the L1/L2's; an ATen op's bytes are distinct as they are)."""

    def __init__(self, by_tensor: bool = False) -> None:
        self.rows: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0, 0.0])
        self.phase, self.kernel, self.by_tensor = "fwd", None, by_tensor
        self.ranges: list[tuple[int, int, str]] = []  # the running kernel's tensor arguments
        self.divert: Tally | None = None  # an autotuner's trial runs count here instead
        # the running launch's addresses: (name, stored?, element size) -> address arrays
        self.touched: dict[tuple[str, bool, int], list[np.ndarray]] = defaultdict(list)

    def name_of(self, ptrs, live) -> str:  # noqa: ANN001
        """The running kernel, or ``kernel.arg`` for the argument the pointers fall in."""
        if not self.by_tensor or not live.any():
            return self.kernel
        addr = int(ptrs.data[live].flat[0])
        args = [n for lo, hi, n in self.ranges if lo <= addr < hi]  # aliases share storage
        return f"{self.kernel}.{'|'.join(args) or '?'}"

    def add(self, name: str, loaded: float, stored: float, call: bool = False,
            distinct: bool = False) -> None:
        """Count bytes (``distinct``: also as distinct bytes, for ATen ops)."""
        if self.divert is not None:
            return self.divert.add(name, loaded, stored, call, distinct)
        row = self.rows[(self.phase, name)]
        row[0] += int(call)
        row[1] += loaded
        row[2] += stored
        if distinct:
            row[3] += loaded
            row[4] += stored

    def touch(self, name: str, stored: bool, addresses: np.ndarray, size: int) -> None:
        """Remember the addresses one load or store of the running launch touched."""
        if self.divert is not None:
            return self.divert.touch(name, stored, addresses, size)
        self.touched[(name, stored, size)].append(addresses.ravel())

    def end_launch(self) -> None:
        """Add the running launch's distinct bytes (each address once) and forget them."""
        if self.divert is not None:
            return self.divert.end_launch()
        for (name, stored, size), parts in self.touched.items():
            row = self.rows[(self.phase, name)]
            row[4 if stored else 3] += np.unique(np.concatenate(parts)).size * size
        self.touched.clear()


def _itemsize(tl_dtype) -> int:  # noqa: ANN001
    return max(1, tl_dtype.primitive_bitwidth // 8)


@contextlib.contextmanager
def counting(tally: Tally, configs: str = "first") -> Iterator[Tally]:
    """Count the interpreter's loads and stores, attributed to the running kernel, and ATen ops
    between kernels, while the block runs; autotuned kernels run their first candidate
    (``configs="first"``) or the one with the fewest counted bytes (``"least"``)."""
    from triton.runtime import interpreter as itp

    import mirasdsl.kernels  # noqa: F401  (its interpreter fixes first)

    builder, grid = itp.InterpreterBuilder, itp.GridExecutor
    load0, store0, run0 = builder.create_masked_load, builder.create_masked_store, grid.__call__

    def measure(ptrs, mask, stored: bool) -> None:  # noqa: ANN001
        live = np.broadcast_to(mask.data, ptrs.data.shape)
        name, size = tally.name_of(ptrs, live), _itemsize(ptrs.get_element_ty())
        n = int(np.count_nonzero(live)) * size
        tally.add(name, 0.0 if stored else n, n if stored else 0.0)
        tally.touch(name, stored, ptrs.data[live], size)

    def load(self, ptrs, mask, other, *rest):  # noqa: ANN001, ANN202
        measure(ptrs, mask, stored=False)
        return load0(self, ptrs, mask, other, *rest)

    def store(self, ptrs, value, mask, *rest):  # noqa: ANN001, ANN202
        measure(ptrs, mask, stored=True)
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
            tally.end_launch()
            tally.kernel = None

    builder.create_masked_load, builder.create_masked_store, grid.__call__ = load, store, run
    try:
        with TorchBytes(tally), tuning_by_bytes(tally, least=configs == "least"):
            yield tally
    finally:
        builder.create_masked_load, builder.create_masked_store, grid.__call__ = load0, store0, run0


@contextlib.contextmanager
def tuning_by_bytes(tally: Tally, least: bool) -> Iterator[None]:
    """Triton's autotuner times each candidate on a GPU; here its benchmark returns the bytes
    the candidate's trial run counts (``least``; the trial goes to a scratch tally), or 0 for
    every candidate, so that the first wins (the tuner keeps the first of equal times)."""
    from triton.runtime.autotuner import Autotuner

    def bench(kernel_call: Callable[[], None], quantiles=None) -> list[float]:  # noqa: ANN001
        if not least:
            return [0.0, 0.0, 0.0]
        trial = tally.divert = Tally()
        try:
            kernel_call()
        finally:
            tally.divert = None
        moved = float(sum(row[1] + row[2] for row in trial.rows.values()))  # counted bytes
        return [moved, moved, moved]

    saved = Autotuner.__dict__["do_bench"]
    Autotuner.do_bench = property(lambda self: bench)
    try:
        yield
    finally:
        Autotuner.do_bench = saved


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
            self.tally.add(f"torch:{name}", read, size(outs), call=True, distinct=True)
        return out


def call_for(kind: str, x: cases.Inputs) -> Callable[[], torch.Tensor]:
    """Our Triton entry point for a family (called directly: the dispatcher would pick the
    PyTorch form on the CPU)."""
    if kind in ("simple_gla", "gla"):
        from mirasdsl.kernels.gla.chunk import chunk_gla

        return lambda: chunk_gla(x["q"], x["k"], x["v"], x["g"])[0]
    from mirasdsl.kernels.delta.chunk import chunk_delta_rule

    return lambda: chunk_delta_rule(x["q"], x["k"], x["v"], x["beta"], x.get("g"))[0]


PEERS: dict[str, Callable[[str, cases.Shape], object]] = {
    "fla": lambda kind, shape: cases.fla_op(kind, shape, kind),
    "titans": lambda kind, shape: cases.titans_memory(shape, DEEP_CHUNKS[kind]),
}


def _nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def prepare(kind: str, shape: cases.Shape, impl: str = "ours"
            ) -> tuple[Callable[[], torch.Tensor], int, int]:
    """The call of ``impl`` (ours or fla) for ``kind`` at ``shape``, the bytes of its inputs
    and of its output."""
    out = shape.B * shape.T * shape.H * shape.D * 2  # bf16, shaped like v
    if impl in PEERS:
        prep = PEERS[impl](kind, shape)
        return prep.fn, _nbytes(prep.leaves), out
    if kind.startswith("deep_memory"):
        os.environ["MIRAS_KERNELS"] = "triton"  # the dispatcher's choice (interpreted here)
        prep = cases.ours_deep_memory(shape, DEEP_CHUNKS[kind], steps="steps" in kind)
        return prep.fn, _nbytes(prep.leaves), out
    x = cases.make_inputs(shape, kind)
    return call_for(kind, x), _nbytes(x.values()), out


def count(kind: str, shape: cases.Shape, tally: Tally, impl: str = "ours",
          configs: str = "first") -> tuple[int, int]:
    """One forward and backward of ``impl``'s ``kind`` at ``shape`` under the tally; returns
    the bytes of the inputs and of the output."""
    fn, inputs, out = prepare(kind, shape, impl)
    with counting(tally, configs):
        tally.phase = "fwd"
        o = fn()
        o = o[0] if isinstance(o, tuple) else o  # (output, state) calls
        tally.phase = "set-up"  # the cotangent: not the op's traffic
        do = torch.randn_like(o)
        tally.phase = "bwd"
        o.backward(do)
    tally.rows = {k: v for k, v in tally.rows.items() if k[0] != "set-up"}
    return inputs, out


def at_target(kind: str, small_t: int, target: cases.Shape, by_tensor: bool = False,
              impl: str = "ours", configs: str = "first") -> tuple[dict, tuple[float, float]]:
    """Rows ``{(phase, kernel): [launches, loaded, stored]}`` and the floors (forward, forward +
    backward) at ``target``, from counts at T and 2T tokens (B = H = 1): the per-token part
    scales with the target's tokens × heads, the rest (weights, per-call set-up) with its heads,
    launches with its T. titans-pytorch is counted with the target's heads (its projections mix
    them: weights grow with heads squared), so only tokens scale."""
    one, two = Tally(by_tensor), Tally(by_tensor)
    heads = target.H if impl == "titans" else 1
    io1 = count(kind, cases.Shape("count", 1, small_t, heads, target.D), one, impl, configs)
    io2 = count(kind, cases.Shape("count", 1, 2 * small_t, heads, target.D), two, impl, configs)
    tokens, copies = target.B * target.T * target.H / heads, target.H / heads

    def scale(a: float, b: float) -> float:
        rate = (b - a) / small_t
        return rate * tokens + (a - rate * small_t) * copies

    rows = {}
    for key in one.rows.keys() | two.rows.keys():
        (c1, *b1), (c2, *b2) = one.rows.get(key, [0] * 5), two.rows.get(key, [0] * 5)
        calls = round(c1 + (c2 - c1) / small_t * (target.T - small_t))
        rows[key] = [calls, *(scale(x, y) for x, y in zip(b1, b2))]
    (i1, o1), (i2, o2) = io1, io2
    return rows, (scale(i1 + o1, i2 + o2), scale(3 * i1 + 2 * o1, 3 * i2 + 2 * o2))


def report(kind: str, rows: dict, floors: tuple[float, float], target: str) -> tuple[float, ...]:
    """Markdown rows: per kernel and phase, GB loaded / stored at the target shape, and the
    distinct GB (each address once per launch). Floors: the forward reads every input and writes
    o; the backward reads every input and dO and writes a gradient per input. Returns the bytes
    of the forward and of forward + backward, counted, then distinct."""
    gb = 1e-9
    print(f"\n### {kind}: bytes per forward + backward at shape {target}\n")
    print("| phase | kernel | launches | loaded GB | stored GB | distinct GB |")
    print("|---|---|---:|---:|---:|---:|")
    totals: dict[str, float] = defaultdict(float)
    order = sorted(rows.items(), key=lambda r: (r[0][0] != "fwd", -sum(r[1][1:3])))
    for (phase, name), (calls, ld, st, uld, ust) in order:
        totals[phase] += ld + st
        totals[phase + " distinct"] += uld + ust
        print(f"| {phase} | `{name}` | {calls} | {ld * gb:.3f} | {st * gb:.3f} | {(uld + ust) * gb:.3f} |")
    f_fwd, f_all = floors
    both = totals["fwd"] + totals["bwd"]
    both_u = totals["fwd distinct"] + totals["bwd distinct"]
    print(f"\n{kind}: forward {totals['fwd'] * gb:.2f} GB (floor {f_fwd * gb:.2f}, "
          f"{totals['fwd'] / f_fwd:.1f}x), forward + backward {both * gb:.2f} GB "
          f"(floor {f_all * gb:.2f}, {both / f_all:.1f}x); distinct per launch: forward "
          f"{totals['fwd distinct'] * gb:.2f} GB, forward + backward {both_u * gb:.2f} GB "
          f"({both_u / f_all:.1f}x the floor)")
    return totals["fwd"], both, totals["fwd distinct"], both_u


def compare(totals: dict[tuple[str, str], tuple[float, ...]]) -> None:
    """The last table: per family, ours and the peer's forward + backward GB, counted and
    distinct, and the peer's over ours (> 1: ours moves fewer)."""
    print("\n### forward + backward GB per implementation (counted / distinct per launch)\n")
    print("| family | peer | ours | peer | peer / ours | ours distinct | peer distinct "
          "| peer / ours distinct |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for (kind, impl), peer in totals.items():
        ours = totals.get((kind, "ours"))
        if impl == "ours" or ours is None:
            continue
        print(f"| {kind} | {impl} | {ours[1] * 1e-9:.2f} | {peer[1] * 1e-9:.2f} | "
              f"{peer[1] / ours[1]:.2f}x | {ours[3] * 1e-9:.2f} | {peer[3] * 1e-9:.2f} | "
              f"{peer[3] / ours[3]:.2f}x |")


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
    p.add_argument("--impl", default="ours",
                   help="comma list of ours, fla (its chunk kernels, configured as on an H100; "
                        "linear families), titans (titans-pytorch's NeuralMemory; deep_memory_*)")
    p.add_argument("--configs", default="first", choices=["first", "least"],
                   help="autotuned kernels run their first candidate, or the one with the fewest "
                        "counted bytes (both implementations)")
    p.add_argument("--by-tensor", action="store_true",
                   help="one row per kernel and tensor argument (which buffers the bytes are)")
    p.add_argument("--value-block", type=int, choices=[32, 64, 128],
                   help="run the tuned value blocks (delta: state passes, output; GLA: output, dv, "
                        "64 or 128) at this size (default: each kernel's first candidate, as the "
                        "interpreter does)")
    a = p.parse_args()
    families, impls = a.families.split(","), a.impl.split(",")
    bad = [f for f in families if f not in FAMILIES] + [i for i in impls if i not in IMPLS]
    if bad:
        p.error(f"unknown families or implementations {bad}; allowed families: "
                f"{', '.join(FAMILIES)}; implementations: {', '.join(IMPLS)}")
    deeps = [f.startswith("deep_memory") for f in families]
    if ("fla" in impls and any(deeps)) or ("titans" in impls and not all(deeps)):
        p.error("fla counts the linear-attention families, titans the deep_memory_* ones: "
                "run them separately")
    setup(a, "fla" in impls)
    totals = {}
    for kind in families:
        deep = kind.startswith("deep_memory")
        target = cases.MEMORY_SHAPE if deep else cases.SHAPES[a.shape]
        for impl in impls:
            try:
                rows, floors = at_target(kind, a.T, target, a.by_tensor, impl, a.configs)
            except Unavailable as exc:  # a peer not installed here
                print(f"traffic.py: error: {impl} is not available: {exc}", file=sys.stderr)
                sys.exit(2)
            name = kind if impl == "ours" else f"{kind} ({impl})"
            totals[(kind, impl)] = report(name, rows, floors, "of titans-pytorch's benchmark "
                                          "(B=4, T=4096, 8 heads of 128)" if deep else a.shape)
    if len(impls) > 1:
        compare(totals)


def setup(a: argparse.Namespace, fla: bool) -> None:
    """Device, forced tiles, every tuning candidate kept (``--configs least``), fla's import."""
    cases.set_device("cpu")
    if a.configs == "least":
        os.environ["MIRAS_TUNE_ALL"] = "1"  # read when our kernels are imported
    if a.value_block:
        force_value_block(a.value_block)
    if fla:  # titans-pytorch runs as PyTorch ops: nothing to prepare
        try:
            interpret_peers.prepare_fla()
        except interpret_peers.PeerUnavailable as exc:
            print(f"traffic.py: error: {exc}", file=sys.stderr)
            sys.exit(2)


if __name__ == "__main__":
    main()
