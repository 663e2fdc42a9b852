"""Compile Triton kernels for an NVIDIA target without a GPU (shared by the kernel families).

The CPU interpreter runs a kernel's arithmetic but not the compiler. Here a family's wrapper runs
once on small CPU tensors with its kernels replaced by recorders; each recorded launch is then
compiled for sm_90 (H100) and checked against the shared-memory limit, which catches type, layout
and resource errors that otherwise show only on the GPU. Needs TRITON_INTERPRET unset.

Each build is also searched for a known hazard: a matmul result transposed in registers (in the
Triton IR, ``tt.trans`` of a tensor in an ``nvidia_mma`` layout), the pattern that sm_90 builds
of Triton 3.4-3.7.0 miscompiled in fla's gated delta-rule backward (fla issue 640); kernels
transpose loaded tiles instead, or form a transposed product directly.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

H100_SHARED_BYTES = 232448  # 227 KB opt-in shared memory per block on sm_90
_PTR = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.int32: "*i32",
        torch.int64: "*i64"}


@dataclass(frozen=True)
class Launch:
    """One kernel launch as the wrapper made it."""

    fn: Any
    args: tuple
    kwargs: dict


class _Recorder:
    """Stands in for a kernel: ``kernel[grid](*args, **kwargs)`` only logs the launch."""

    def __init__(self, fn: Any, log: list[Launch]) -> None:
        self.fn, self.log = fn, log

    def __getitem__(self, grid: object):
        return lambda *args, **kwargs: self.log.append(Launch(self.fn, args, kwargs))


@contextlib.contextmanager
def recording(targets: list[tuple[Any, str]]) -> Iterator[list[Launch]]:
    """Replace each ``(module, kernel_name)`` by a recorder while the block runs; yields the log."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compile checks need TRITON_INTERPRET unset (kernels must be compilable)")
    log: list[Launch] = []
    saved = [(m, n, getattr(m, n)) for m, n in targets]
    for m, n, fn in saved:
        setattr(m, n, _Recorder(fn, log))
    try:
        yield log
    finally:
        for m, n, fn in saved:
            setattr(m, n, fn)


def launch_shapes(fn: Any, kwargs: dict) -> tuple[Any, list[dict]]:
    """``(jit function, [launch options])``: one per autotune candidate, or the launch's own.
    A candidate's tile sizes (``triton.Config.kwargs``) come under the key ``"tiles"``."""
    configs = getattr(fn, "configs", None)
    if configs is None:
        return fn, [{k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}]
    return fn.fn, [{"num_warps": c.num_warps, "num_stages": c.num_stages, "tiles": dict(c.kwargs)}
                   for c in configs]


@dataclass(frozen=True)
class Candidate:
    """One launch shape of one launch, compiled for sm_90: its shared memory, or why it failed."""

    name: str
    num_warps: int | None
    num_stages: int | None
    shared: int | None  # bytes; None when it did not compile
    error: str = ""
    tiles: str = ""  # the candidate's tile sizes, e.g. "BV=64", when it tunes any
    regs: int | None = None  # registers per thread (255 is sm_90's most); None when unknown
    stack: int | None = None  # local-memory bytes per thread: register spills (0 = none)
    mma_transposes: int = 0  # matmul results transposed in registers (the hazard above)

    @property
    def shape(self) -> str:
        """``warps W, stages S`` and the tile sizes, if any: how it was launched."""
        return f"warps {self.num_warps}, stages {self.num_stages}" + (f", {self.tiles}" if self.tiles else "")

    @property
    def viable(self) -> bool:
        """Compiled and fits an H100 block's shared memory (what the GPU autotuner can use)."""
        return self.shared is not None and self.shared <= H100_SHARED_BYTES

    def line(self) -> str:
        """``name shared N B regs R stack S B (warps, stages, tiles)`` when viable, else
        ``name rejected (warps, stages): why``."""
        if self.viable:
            regs = f" regs {self.regs} stack {self.stack} B" if self.regs is not None else ""
            hazard = f" HAZARD: {self.mma_transposes} register transposes of matmul results" if self.mma_transposes else ""
            return f"{self.name:28s} shared {self.shared} B{regs} ({self.shape}){hazard}"
        why = self.error or f"{self.shared} bytes of shared memory > {H100_SHARED_BYTES}"
        return f"{self.name:28s} rejected ({self.shape}): {why}"


def _tile_text(tiles: dict) -> str:
    """``"BV=64"``-style text of a candidate's tile sizes (empty when it has none)."""
    return " ".join(f"{k}={v}" for k, v in sorted(tiles.items()))


def _source(fn: Any, launch: Launch, tiles: dict) -> Any:
    """The ``ASTSource`` of one launch: its tensors' pointer types, its constexprs (and a
    candidate's tile sizes) bound."""
    from triton.compiler import ASTSource

    names = fn.arg_names
    consts = {k: v for k, v in launch.kwargs.items() if k not in ("num_warps", "num_stages")}
    consts.update({p.name: a for p, a in zip(fn.params, launch.args) if p.is_constexpr})
    consts.update(tiles)
    sig: dict[str, str] = {}
    for name, arg in zip(names, launch.args):
        if name in consts:
            continue
        if isinstance(arg, torch.Tensor):
            sig[name] = _PTR[arg.dtype]
        elif isinstance(arg, bool):
            sig[name] = "i1"
        elif isinstance(arg, int):
            sig[name] = "i32"
        else:
            sig[name] = "fp32"
    sig.update({k: "constexpr" for k in consts})
    return ASTSource(fn, sig, constexprs={(names.index(k),): v for k, v in consts.items()})


def _cuobjdump() -> str | None:
    """Path of the ``cuobjdump`` that ships with Triton's NVIDIA backend (or on PATH)."""
    import triton

    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return bundled if os.path.exists(bundled) else shutil.which("cuobjdump")


def resources(cubin: bytes) -> tuple[int | None, int | None]:
    """``(registers per thread, stack bytes per thread)`` of a compiled kernel, read from its
    cubin with cuobjdump; ``(None, None)`` when no cuobjdump is at hand. The stack is where
    ptxas puts the registers it could not fit (spills), so a kernel that fits has 0."""
    tool = _cuobjdump()
    if tool is None:
        return None, None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True).stdout
    regs, stack = re.search(r"REG:(\d+)", out), re.search(r"STACK:(\d+)", out)
    return (int(regs.group(1)) if regs else None), (int(stack.group(1)) if stack else None)


def mma_transposes(ttgir: str) -> int:
    """How many ``tt.trans`` in a build's Triton GPU IR transpose a tensor held in an MMA (matmul
    result) layout: register transposes of matmul results."""
    mma = {m.group(1) for m in re.finditer(r"^(#\w+) = #ttg\.nvidia_mma<", ttgir, re.M)}
    srcs = re.findall(r"tt\.trans %\S+ .*?: tensor<[^,>]+, (#\w+)>", ttgir)
    return sum(src in mma for src in srcs)


def compile_launch(launch: Launch, capability: int = 90) -> list[Candidate]:
    """Compile one recorded launch for ``cuda:capability``, every autotune candidate."""
    import triton
    from triton.backends.compiler import GPUTarget

    fn, option_sets = launch_shapes(launch.fn, launch.kwargs)
    target = GPUTarget("cuda", capability, 32)
    out = []
    for opts in option_sets:
        tiles = opts.pop("tiles", {})
        src = _source(fn, launch, tiles)
        warps, stages = opts.get("num_warps"), opts.get("num_stages")
        try:
            kernel = triton.compile(src, target=target, options=opts)
            regs, stack = resources(kernel.asm["cubin"])
            out.append(Candidate(fn.__name__, warps, stages, kernel.metadata.shared, tiles=_tile_text(tiles),
                                 regs=regs, stack=stack, mma_transposes=mma_transposes(kernel.asm["ttgir"])))
        except Exception as exc:  # noqa: BLE001 - ptxas register/resource failures: the tuner skips these
            reason = str(exc).strip().splitlines()
            fatal = [r for r in reason if "fatal" in r or "Error(" in r] or reason[-1:]
            why = fatal[0][:200] if fatal else type(exc).__name__
            out.append(Candidate(fn.__name__, warps, stages, None, why, _tile_text(tiles)))
    return out


def compile_all(launches: list[Launch]) -> list[Candidate]:
    """Compile every launch, each autotune candidate; raise if a launch has no viable candidate.

    On the GPU the autotuner skips candidates that fail to compile or to fit (it times them as
    infinite), so a launch is broken only when none of its candidates compiles and fits.
    """
    report = []
    for launch in launches:
        candidates = compile_launch(launch)
        if not any(c.viable for c in candidates):
            raise RuntimeError("no launch shape of this kernel compiles and fits an H100:\n"
                               + "\n".join(c.line() for c in candidates))
        report.extend(candidates)
    return report


def spill_summary(candidates: list[Candidate]) -> list[str]:
    """One line per kernel: how many of its viable candidates keep every value in registers
    (stack 0), or, when all of them spill, the least any spills. Spilled registers go to local
    memory, a round trip through L1/L2 in the middle of the kernel's arithmetic."""
    by_name: dict[str, list[Candidate]] = {}
    for c in candidates:
        if c.viable and c.stack is not None:
            by_name.setdefault(c.name, []).append(c)
    lines = []
    for name, cands in by_name.items():
        free = [c for c in cands if c.stack == 0]
        if free:
            lines.append(f"registers: {name:28s} {len(free)} of {len(cands)} candidates spill-free")
        else:
            least = min(cands, key=lambda c: c.stack)
            lines.append(f"registers: {name:28s} every candidate spills "
                         f"(least {least.stack} B/thread: {least.shape})")
    return lines


GATES = {0: "none", 1: "scalar", 2: "channel"}  # gate modes of the gated families (GLA, delta)


KERNELS_HELP = "comma list: compile only kernels whose name contains one"


def wanted_kernels(text: str) -> tuple[str, ...]:
    """The ``--kernels`` option's comma list as name fragments (empty: every kernel)."""
    return tuple(w for w in text.split(",") if w)


def emit(prefix: str, launches: list[Launch], wanted: tuple[str, ...] = ()) -> None:
    """Compile ``launches`` (only kernels whose name contains one of ``wanted``, if any); print
    each candidate's line, then each kernel's register summary, every line after ``prefix: ``."""
    if wanted:
        launches = [x for x in launches if any(w in launch_shapes(x.fn, x.kwargs)[0].__name__ for w in wanted)]
    cands = compile_all(launches)
    for cand in cands:
        print(f"{prefix}: {cand.line()}")
    for line in spill_summary(cands):
        print(f"{prefix}: {line}")


def gated_family_cli(doc: str, record_launches: Callable[[int, int, int, torch.dtype], list[Launch]]) -> None:
    """Command line of a gated family's compile check: compile the recorded launches
    (``record_launches(gate, dk, dv, dtype)``) of each gate mode; one line per candidate,
    ``gate=<mode> K=<dk> V=<dv> <dtype>: <name> shared <bytes> B``. Raises (exit 1) when a
    launch has no viable candidate."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--dk", type=int, default=128)
    parser.add_argument("--dv", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--gates", default="0,1,2", help="gate modes: 0 none, 1 scalar, 2 channel")
    parser.add_argument("--kernels", default="", help=KERNELS_HELP)
    a = parser.parse_args()
    wanted = wanted_kernels(a.kernels)
    for gate in (int(x) for x in a.gates.split(",")):
        emit(f"gate={GATES[gate]} K={a.dk} V={a.dv} {a.dtype}",
             record_launches(gate, a.dk, a.dv, getattr(torch, a.dtype)), wanted)
