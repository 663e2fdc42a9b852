"""Compile the delta-rule kernels for an NVIDIA target without a GPU.

The CPU interpreter runs the kernels' arithmetic but not the compiler: this records the exact
launches ``chunk_delta_rule`` makes (forward and backward, kernels replaced by recorders), then
compiles each one for sm_90 (H100) and checks it fits in shared memory. It catches type,
layout and resource errors that only show on the GPU. Run it where TRITON_INTERPRET is unset:

    python -m mirasdsl.kernels.delta.compile_check [--dk 128] [--dv 128] [--dtype bfloat16]
"""
from __future__ import annotations

import torch

from ..compile_check import Launch, gated_family_cli, recording


def record_launches(gate: int, dk: int, dv: int, dtype: torch.dtype) -> list[Launch]:
    """Run forward and backward once on small CPU tensors with every kernel recorded."""
    from . import _tl_bwd, _tl_fwd, chunk

    targets = [(m, n) for m in (_tl_fwd, _tl_bwd) for n in dir(m) if n.endswith("_kernel")]
    targets.append((chunk, "chunk_cumsum_kernel"))
    with recording(targets) as log:
        b, t, h = 1, 80, 1
        leaves = [torch.randn(b, t, h, d, dtype=dtype, requires_grad=True) for d in (dk, dk, dv)]
        beta = torch.rand(b, t, h, dtype=dtype, requires_grad=True)
        g = None if gate == 0 else torch.zeros((b, t, h) if gate == 1 else (b, t, h, dk), dtype=dtype)
        h0 = torch.zeros(b, h, dk, dv, requires_grad=True)
        o, s = chunk.chunk_delta_rule(*leaves, beta, g, initial_state=h0, output_final_state=True)
        (o.float().sum() + s.sum()).backward()
    return log


if __name__ == "__main__":
    gated_family_cli(__doc__, record_launches)
