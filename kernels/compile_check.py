"""Compile Triton kernels for an NVIDIA target without a GPU (shared by the kernel families).

The CPU interpreter runs a kernel's arithmetic but not the compiler. Here a family's wrapper runs
once on small CPU tensors with its kernels replaced by recorders; each recorded launch is then
compiled for sm_90 (H100) and checked against the shared-memory limit, which catches type, layout
and resource errors that otherwise show only on the GPU. Needs TRITON_INTERPRET unset.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

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
    """``(jit function, [launch options])``: one per autotune candidate, or the launch's own."""
    configs = getattr(fn, "configs", None)
    if configs is None:
        return fn, [{k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}]
    return fn.fn, [{"num_warps": c.num_warps, "num_stages": c.num_stages} for c in configs]


def compile_launch(launch: Launch, capability: int = 90) -> list[Any]:
    """Compile one recorded launch for ``cuda:capability`` (every autotune candidate)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn, option_sets = launch_shapes(launch.fn, launch.kwargs)
    names = fn.arg_names
    consts = {k: v for k, v in launch.kwargs.items() if k not in ("num_warps", "num_stages")}
    sig: dict[str, str] = {}
    for name, arg in zip(names, launch.args):
        if isinstance(arg, torch.Tensor):
            sig[name] = _PTR[arg.dtype]
        elif isinstance(arg, bool):
            sig[name] = "i1"
        elif isinstance(arg, int):
            sig[name] = "i32"
        else:
            sig[name] = "fp32"
    sig.update({k: "constexpr" for k in consts})
    src = ASTSource(fn, sig, constexprs={(names.index(k),): v for k, v in consts.items()})
    target = GPUTarget("cuda", capability, 32)
    return [triton.compile(src, target=target, options=opts) for opts in option_sets]


def compile_all(launches: list[Launch]) -> list[tuple[str, int]]:
    """Compile every launch (each autotune candidate); raise if one needs more shared memory than an H100 block has."""
    report = []
    for launch in launches:
        name = getattr(launch.fn, "fn", launch.fn).__name__
        for compiled in compile_launch(launch):
            shared = compiled.metadata.shared
            if shared > H100_SHARED_BYTES:
                raise RuntimeError(f"{name} (warps {compiled.metadata.num_warps}, stages "
                                   f"{compiled.metadata.num_stages}) needs {shared} bytes of "
                                   f"shared memory (> {H100_SHARED_BYTES})")
            report.append((name, shared))
    return report
