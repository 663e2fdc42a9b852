"""Compile our Triton kernels for sm_90 at shapes beyond the benchmark's and report builds that
transpose a matmul result in registers (the pattern Triton 3.4-3.7.0 miscompiled on Hopper).

``precompile.py`` compiles the benchmark's launches (head dim 128, deep memory at chunks 16 and
64); a kernel's layouts, and so whether a transpose lands in registers, also depend on the head
dim, the chunk and the divisibility of sizes and pointers. Here each family's entry point runs on
CPU tensors through the H100 stand-in driver (``precompile.StandInH100``: every launch specialised
and every autotune candidate compiled as on the device, launches doing nothing) at the shapes
below, into a scratch cache, which ``triton_cache.hazard_lines`` then reads. Exit code 1 when a
build has the pattern. Run with the device's Triton first on PYTHONPATH to check that version:

    [PYTHONPATH=<triton 3.6.0 folder>] python benchmarks/hazard_scan.py [--dims 64] [--chunks 16,32]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

BF16 = torch.bfloat16


def _leaf(*shape: int, dtype: torch.dtype = BF16) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype).requires_grad_(True)


def _linear_cases(D: int, T: int, H: int) -> dict[str, Callable[[], torch.Tensor]]:
    """Both linear families, each gate mode: ``name -> call`` (forward, output)."""
    from mirasdsl.kernels.delta import delta_rule
    from mirasdsl.kernels.gla import gated_linear_attention

    gates = {"none": lambda: None, "scalar": lambda: F.logsigmoid(_leaf(1, T, H, dtype=torch.float32)),
             "channel": lambda: F.logsigmoid(_leaf(1, T, H, D, dtype=torch.float32) + 3)}
    out = {}
    for name, gate in gates.items():
        out[f"gla {name} D={D}"] = lambda gate=gate: gated_linear_attention(
            _leaf(1, T, H, D), _leaf(1, T, H, D), _leaf(1, T, H, D), g=gate())[0]
        out[f"delta {name} D={D}"] = lambda gate=gate: delta_rule(
            _leaf(1, T, H, D), _leaf(1, T, H, D), _leaf(1, T, H, D), _leaf(1, T, H).sigmoid(), g=gate())[0]
    return out


def _memory_case(D: int, T: int, H: int, chunk: int, depth: int, step: int) -> Callable[[], torch.Tensor]:
    """Deep memory (LayerNorm, residual, momentum, decay; hidden 4 D at depth 2)."""
    from mirasdsl.kernels.deep_memory import DeepMemoryConfig, deep_memory

    cfg = DeepMemoryConfig(depth=depth, hidden=4 * D if depth == 2 else None, residual=True, norm=True,
                           momentum=True, chunk_size=T if step > 1 else chunk, step=step)
    dims = [D] + [4 * D] * (depth - 1) + [D]
    ws = tuple(_leaf(H, dims[i], dims[i + 1], dtype=torch.float32) for i in range(depth))
    return lambda: deep_memory(_leaf(1, T, H, D), _leaf(1, T, H, D), _leaf(1, T, H, D), _leaf(1, T, H).sigmoid(),
                               ws, cfg, g=F.logsigmoid(_leaf(1, T, H)), mu=_leaf(1, T, H).sigmoid())[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", default="64", help="head dims (comma list)")
    p.add_argument("--chunks", default="16,32", help="deep-memory chunk sizes (comma list)")
    p.add_argument("--steps", default="16", help="step-form steps (comma list)")
    p.add_argument("--heads", type=int, default=16)
    a = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from precompile import stand_in
    from triton_cache import hazard_lines

    cache = Path(tempfile.mkdtemp(prefix="mirasdsl-hazards-"))
    stand_in(cache, None)
    cases: dict[str, Callable[[], torch.Tensor]] = {}
    for D in (int(x) for x in a.dims.split(",")):
        cases.update(_linear_cases(D, 128, a.heads))
        for C in (int(x) for x in a.chunks.split(",")):
            for depth in (2, 1):
                cases[f"deep memory depth {depth} chunk {C} D={D}"] = _memory_case(D, 128, a.heads // 2, C, depth, 1)
        for S in (int(x) for x in a.steps.split(",")):
            cases[f"deep memory steps of {S} D={D}"] = _memory_case(D, 128, a.heads // 2, 128, 2, S)
    for name, run in cases.items():
        start = time.time()
        run().float().sum().backward()
        print(f"  {name}: {time.time() - start:.1f} s", flush=True)
    lines = hazard_lines(cache)
    print("\n".join(lines))
    return 1 if len(lines) > 1 else 0


if __name__ == "__main__":
    sys.exit(main())
