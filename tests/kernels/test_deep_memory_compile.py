"""The deep-memory Triton read-out and chunk step compile for sm_90 at the benchmark's Titans
shapes and fit in an H100's shared memory (the CPU interpreter never runs the compiler)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_readout_kernels_compile_for_h100() -> None:
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "mirasdsl.kernels.deep_memory.compile_check"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "HAZARD" not in done.stdout, [line for line in done.stdout.splitlines() if "HAZARD" in line]
    lines = [line for line in done.stdout.splitlines() if "shared" in line]
    reads = [line for line in lines if "steps read:" in line]
    keys = [line for line in lines if "steps keys:" in line]
    readout = [line for line in lines if "step:" not in line and "bias=" not in line
               and "linear:" not in line and "fused" not in line and "steps " not in line]
    fused = [line for line in lines if "fused" in line]
    linear = [line for line in lines if "linear:" in line]
    step = [line for line in lines if "step:" in line]
    biases = [line for line in lines if "bias=" in line]
    # 2 precisions × 4 layer shapes × (forward, backward) × 3 autotuned launch shapes
    assert len(readout) == 48
    # the step form's sums and reads: 2 precisions × steps of 64, 16 × ((forward, backward) × 4
    # launch shapes + the sums' backward, one launch per layer × 3)
    assert len(reads) == 56
    assert {line.split()[4] for line in reads} == {"_read_fwd_kernel", "_read_bwd_kernel", "_combine_bwd_kernel"}
    # its keys: 2 precisions × steps of 64, 16 × (forward, two backward) × 3 launch shapes
    assert len(keys) == 36
    assert {line.split()[4] for line in keys} == {"_keys_fwd_kernel", "_keys_bwd_rows_kernel",
                                                  "_keys_bwd_hidden_kernel"}
    assert {line.split()[5] for line in readout} == {"_readout_fwd_kernel", "_readout_bwd_kernel"}
    # 2 precisions × chunk 64, 16 × 6 autotuned kernels: 2 launch shapes for the keys' kernels,
    # 4 for the update and the bias kernels (row blocks), 5 for the backward hidden kernel
    assert len(step) == 84
    assert {line.split()[3] for line in step} == {"_keys_kernel", "_bias_kernel", "_update_kernel",
                                                  "_bwd_hidden_kernel", "_bwd_bias_kernel",
                                                  "_bwd_keys_kernel"}
    # 2 precisions × chunk 64, 16 × the six kernels of a depth-1 step (the two bias kernels
    # autotuned over 4 launch shapes)
    assert len(linear) == 48
    assert {line.split()[3] for line in linear} == {
        "_linear_keys_kernel", "_bias_kernel", "_linear_update_kernel", "_linear_bwd_update_kernel",
        "_bwd_bias_kernel", "_linear_bwd_keys_kernel"}
    # 2 precisions × (depth 2: both read-outs' backward, 3 launch shapes each, the hidden
    # kernel alone and carrying the later chunk's keys backward, 5 each, and the update kernel
    # carrying the next chunk's keys forward, 4; depth 1: the read-out's backward, 3 shapes, +
    # the linear update's backward), FOLD / no DENSE / NEXT / LATER
    assert len(fused) == 48
    assert {line.split()[5] for line in fused} == {"_readout_bwd_kernel", "_bwd_hidden_kernel",
                                                   "_update_kernel", "_linear_bwd_update_kernel"}
    # 2 precisions × the dot, lp, huber and robust biases × (forward, backward bias kernel) × 4
    # launch shapes
    assert len(biases) == 64
    assert {line.split()[3] for line in biases} == {"_bias_kernel", "_bwd_bias_kernel"}
