"""compile_check's register report: registers and spilled bytes per thread of sm_90 builds,
read from the cubin (the CPU interpreter never runs the compiler, so this is the only view of
them without a GPU)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from mirasdsl.kernels.compile_check import Candidate, spill_summary

# Two kernels compiled for sm_90 in a subprocess (TRITON_INTERPRET unset): a small one, and one
# holding a [128, 128] fp32 tile (512 values per thread) in a single warp, which must spill.
_SCRIPT = textwrap.dedent('''
    import json, torch, triton, triton.language as tl
    from mirasdsl.kernels.compile_check import Launch, compile_launch

    @triton.jit
    def small(x, y, N, B: tl.constexpr):
        r = tl.arange(0, B)
        tl.store(y + r, tl.load(x + r, mask=r < N) + 1.0, mask=r < N)

    @triton.jit
    def heavy(x, y, B: tl.constexpr):
        r = tl.arange(0, B)
        t = tl.load(x + r[:, None] * B + r[None, :])
        t = tl.cumsum(t, 0) * tl.cumsum(t, 1)
        tl.store(y + r[:, None] * B + r[None, :], t)

    x = torch.empty(16384)
    out = {}
    for name, launch in (("small", Launch(small, (x, x, 100), {"B": 128, "num_warps": 4})),
                         ("heavy", Launch(heavy, (x, x), {"B": 128, "num_warps": 1}))):
        (c,) = compile_launch(launch)
        out[name] = [c.regs, c.stack, c.line()]
    print(json.dumps(out))
''')


@pytest.mark.slow
def test_registers_and_spills_of_sm90_builds(tmp_path) -> None:
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = tmp_path / "kernels.py"  # Triton reads a jit function's source from its file
    script.write_text(_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    small_regs, small_stack, small_line = out["small"]
    heavy_regs, heavy_stack, _ = out["heavy"]
    assert 0 < small_regs <= 64 and small_stack == 0
    assert heavy_regs > 0 and heavy_stack > 1024  # 512 fp32 values per thread cannot all fit
    assert f"regs {small_regs} stack 0 B" in small_line and "(warps 4," in small_line


def test_spill_summary_lines() -> None:
    cands = [
        Candidate("a_kernel", 4, 1, 1000, regs=255, stack=512),
        Candidate("a_kernel", 8, 1, 1000, regs=200, stack=0),
        Candidate("b_kernel", 4, 1, 1000, regs=255, stack=900, tiles="BV=32"),
        Candidate("b_kernel", 8, 2, 1000, regs=255, stack=300, tiles="BV=64"),
        Candidate("b_kernel", 8, 3, 10**6, regs=255, stack=0),  # does not fit: not counted
        Candidate("c_kernel", 4, 1, None, error="ptxas failed"),  # did not compile: not listed
    ]
    lines = spill_summary(cands)
    assert len(lines) == 2
    assert "a_kernel" in lines[0] and "1 of 2 candidates spill-free" in lines[0]
    assert "b_kernel" in lines[1] and "every candidate spills (least 300 B/thread: warps 8, stages 2, BV=64)" in lines[1]


def test_mma_transposes_finds_a_matmul_result_transposed_in_registers() -> None:
    """The hazard count reads Triton GPU IR: a ``tt.trans`` whose source is in an ``nvidia_mma``
    layout counts, one of a loaded (blocked) tile or a shared-memory transpose does not."""
    from mirasdsl.kernels.compile_check import mma_transposes

    ir = "\n".join([
        "#blocked = #ttg.blocked<{sizePerThread = [1, 4], threadsPerWarp = [8, 4], warpsPerCTA = [4, 1], order = [1, 0]}>",
        "#mma = #ttg.nvidia_mma<{versionMajor = 3, versionMinor = 0, warpsPerCTA = [4, 1], instrShape = [16, 64, 16]}>",
        "    %a = tt.trans %x {order = array<i32: 1, 0>} : tensor<64x64xbf16, #mma> -> tensor<64x64xbf16, #linear>",
        "    %b = tt.trans %y {order = array<i32: 1, 0>} : tensor<64x32xf32, #blocked> -> tensor<32x64xf32, #blocked1>",
        "    %c = ttg.memdesc_trans %z {order = array<i32: 1, 0>} : !ttg.memdesc<64x64xf32, #shared, #smem> -> "
        "!ttg.memdesc<64x64xf32, #shared1, #smem>",
    ])
    assert mma_transposes(ir) == 1
    assert mma_transposes(ir.replace("#mma>", "#blocked>")) == 0
