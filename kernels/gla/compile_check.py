"""Compile the GLA kernels for an NVIDIA target without a GPU.

Records the exact launches ``chunk_gla`` makes (forward and backward, kernels replaced by
recorders) for one gate mode, then compiles each launch, every autotune candidate, for sm_90
(H100) and checks it fits in shared memory (``kernels/compile_check.py``). Run it where
TRITON_INTERPRET is unset:

    python -m mirasdsl.kernels.gla.compile_check [--dk 128] [--dv 128] [--dtype bfloat16]
"""
from __future__ import annotations

import argparse

import torch

from ..compile_check import Candidate, Launch, compile_all, recording

GATES = {0: "none", 1: "scalar", 2: "channel"}


def record_launches(gate: int, dk: int, dv: int, dtype: torch.dtype) -> list[Launch]:
    """Run forward and backward once on small CPU tensors with every kernel recorded."""
    from . import chunk

    targets = [(chunk, n) for n in dir(chunk) if n.endswith("_kernel")]
    with recording(targets) as log:
        b, t, h = 1, 80, 1
        q, k, v = (torch.randn(b, t, h, d, dtype=dtype, requires_grad=True) for d in (dk, dk, dv))
        g = None if gate == 0 else torch.zeros((b, t, h) if gate == 1 else (b, t, h, dk), dtype=dtype)
        h0 = torch.zeros(b, h, dk, dv, requires_grad=True)
        o, s = chunk.chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True)
        (o.float().sum() + s.sum()).backward()
    return log


def check(gate: int, dk: int, dv: int, dtype: torch.dtype) -> list[Candidate]:
    """Compile every launch of one configuration; raise if one has no viable launch shape."""
    return compile_all(record_launches(gate, dk, dv, dtype))


def main() -> None:
    """Command line: compile every gate mode for the given head sizes and dtype."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dk", type=int, default=128)
    parser.add_argument("--dv", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--gates", default="0,1,2")
    a = parser.parse_args()
    for gate in (int(x) for x in a.gates.split(",")):
        for cand in check(gate, a.dk, a.dv, getattr(torch, a.dtype)):
            print(f"gate={GATES[gate]} K={a.dk} V={a.dv} {a.dtype}: {cand.line()}")


if __name__ == "__main__":
    main()
