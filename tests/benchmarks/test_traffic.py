"""benchmarks/traffic.py counts the bytes Triton kernels load and store (under the interpreter)."""
from __future__ import annotations

import os
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="counts under Triton's CPU interpreter"
)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))


def test_counts_masked_loads_and_stores_exactly() -> None:
    import triton
    import triton.language as tl

    import traffic

    @triton.jit
    def halve(x, y, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(y + offs, (tl.load(x + offs, mask=offs < n) * 0.5).to(tl.bfloat16), mask=offs < n)

    x, y = torch.randn(64), torch.empty(64, dtype=torch.bfloat16)
    tally = traffic.Tally()
    with traffic.counting(tally):
        halve[(1,)](x, y, 37, BLOCK=64)
    assert tally.rows[("fwd", "halve")] == [1, 37 * 4, 37 * 2]  # fp32 in, bf16 out, masked
    halve[(1,)](x, y, 37, BLOCK=64)  # counting ends with the block
    assert tally.rows[("fwd", "halve")][0] == 1
    by_arg = traffic.Tally(by_tensor=True)
    with traffic.counting(by_arg):
        halve[(1,)](x, y, 37, BLOCK=64)
    assert by_arg.rows[("fwd", "halve.x")][1:] == [37 * 4, 0]
    assert by_arg.rows[("fwd", "halve.y")][1:] == [0, 37 * 2]


def test_delta_rule_writes_its_output_once() -> None:
    import cases
    import traffic

    cases.set_device("cpu")
    shape = cases.Shape("t", 1, 70, 2, 16)
    tally = traffic.Tally()
    inputs, out = traffic.count("delta", shape, tally)
    assert tally.rows[("fwd", "output_kernel")][2] == out == 70 * 2 * 16 * 2  # bf16 o, every token
    fwd_total = sum(ld + st for (phase, _), (_, ld, st) in tally.rows.items() if phase == "fwd")
    assert fwd_total > inputs + out  # never below the floor


def test_scaling_separates_per_token_and_fixed_bytes() -> None:
    """At the counting shape itself the scaled rows are the counts; a target with twice the
    tokens doubles the per-token part only."""
    import cases
    import traffic

    cases.set_device("cpu")
    tally = traffic.Tally()
    traffic.count("delta", cases.Shape("t", 1, 64, 1, 16), tally)
    rows, floors = traffic.at_target("delta", 64, cases.Shape("t", 1, 64, 1, 16))
    for key, (calls, ld, st) in rows.items():
        assert calls == tally.rows[key][0] and ld == pytest.approx(tally.rows[key][1])
        assert st == pytest.approx(tally.rows[key][2])
    double, _ = traffic.at_target("delta", 64, cases.Shape("t", 2, 64, 1, 16))
    out = double[("fwd", "output_kernel")][2]
    assert out == pytest.approx(2 * rows[("fwd", "output_kernel")][2])
