"""Compile the delta-rule kernels for an NVIDIA target without a GPU.

The CPU interpreter runs the kernels' arithmetic but not the compiler: this records the exact
launches ``chunk_delta_rule`` makes (forward and backward, kernels replaced by recorders), then
compiles each one for sm_90 (H100) and checks it fits in shared memory. It catches type,
layout and resource errors that only show on the GPU. Run it where TRITON_INTERPRET is unset:

    python -m mirasdsl.kernels.delta.compile_check [--dk 128] [--dv 128] [--dtype bfloat16]
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

import torch

H100_SHARED_BYTES = 232448  # 227 KB opt-in shared memory per block on sm_90
_PTR = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.int32: "*i32"}


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


def record_launches(gate: int, dk: int, dv: int, dtype: torch.dtype) -> list[Launch]:
    """Run forward and backward once on small CPU tensors with every kernel recorded."""
    from . import _tl_bwd, _tl_fwd, chunk

    log: list[Launch] = []
    patched = [(m, n) for m in (_tl_fwd, _tl_bwd) for n in dir(m) if n.endswith("_kernel")]
    patched.append((chunk, "chunk_cumsum_kernel"))
    saved = [(m, n, getattr(m, n)) for m, n in patched]
    for m, n, fn in saved:
        setattr(m, n, _Recorder(fn, log))
    try:
        b, t, h = 1, 80, 1
        leaves = [torch.randn(b, t, h, d, dtype=dtype, requires_grad=True) for d in (dk, dk, dv)]
        beta = torch.rand(b, t, h, dtype=dtype, requires_grad=True)
        g = None if gate == 0 else torch.zeros((b, t, h) if gate == 1 else (b, t, h, dk), dtype=dtype)
        h0 = torch.zeros(b, h, dk, dv, requires_grad=True)
        o, s = chunk.chunk_delta_rule(*leaves, beta, g, initial_state=h0, output_final_state=True)
        (o.float().sum() + s.sum()).backward()
    finally:
        for m, n, fn in saved:
            setattr(m, n, fn)
    return log


def compile_launch(launch: Launch, capability: int = 90) -> Any:
    """Compile one recorded launch for ``cuda:capability``; returns the compiled kernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn, names = launch.fn, launch.fn.arg_names
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
    opts = {k: launch.kwargs[k] for k in ("num_warps", "num_stages") if k in launch.kwargs}
    return triton.compile(src, target=GPUTarget("cuda", capability, 32), options=opts)


def check(gate: int, dk: int, dv: int, dtype: torch.dtype) -> list[tuple[str, int]]:
    """Compile every launch of one configuration; raise if one needs too much shared memory."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compile_check needs TRITON_INTERPRET unset (kernels must be compilable)")
    report = []
    for launch in record_launches(gate, dk, dv, dtype):
        shared = compile_launch(launch).metadata.shared
        name = launch.fn.__name__
        if shared > H100_SHARED_BYTES:
            raise RuntimeError(f"{name} needs {shared} bytes of shared memory (> {H100_SHARED_BYTES})")
        report.append((name, shared))
    return report


def main() -> None:
    """Command line: compile every gate mode for the given head sizes and dtype."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dk", type=int, default=128)
    parser.add_argument("--dv", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--gates", default="0,1,2")
    a = parser.parse_args()
    for gate in (int(x) for x in a.gates.split(",")):
        for name, shared in check(gate, a.dk, a.dv, getattr(torch, a.dtype)):
            print(f"gate={gate} K={a.dk} V={a.dv} {a.dtype}: {name:28s} shared {shared} B")


if __name__ == "__main__":
    main()
