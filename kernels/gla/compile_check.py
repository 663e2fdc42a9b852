"""Compile the GLA kernels for an NVIDIA target without a GPU.

Records the exact launches ``chunk_gla`` makes (forward and backward, kernels replaced by
recorders) for one gate mode, then compiles each launch, every autotune candidate, for sm_90
(H100) and checks it fits in shared memory (``kernels/compile_check.py``). Run it where
TRITON_INTERPRET is unset:

    python -m mirasdsl.kernels.gla.compile_check [--dk 128] [--dv 128] [--dtype bfloat16]
"""
from __future__ import annotations

import torch

from ..compile_check import Launch, gated_family_cli, recording


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


if __name__ == "__main__":
    gated_family_cli(__doc__, record_launches)
