"""benchmarks/profile_kernels.py: the line that says whether the GPU or the host bounds a step."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))


@dataclass
class Avg:
    """Stands in for torch's ``FunctionEventAvg`` (device times in µs)."""

    count: int
    self_device_time_total: float


@dataclass
class OldAvg:
    """An older torch's name for the same field."""

    count: int
    self_cuda_time_total: float


def test_busy_line_sums_kernels_and_relates_them_to_the_wall_time() -> None:
    from profile_kernels import busy_line

    events = [Avg(64, 1500.0), Avg(64, 500.0), Avg(3, 0.0)]  # the last: no GPU time, not a kernel
    line = busy_line(events, wall_ms=8.0, host_ms=7.5)
    assert line == "wall 8.000 ms, GPU kernels 2.000 ms (25% busy), 128 kernel launches, host issue 7.500 ms"


def test_busy_line_reads_the_older_field_name() -> None:
    from profile_kernels import busy_line

    assert "GPU kernels 3.000 ms (100% busy), 2 kernel launches" in busy_line([OldAvg(2, 3000.0)], 3.0, 1.0)
