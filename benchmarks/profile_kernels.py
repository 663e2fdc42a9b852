"""Where the time of our kernels goes: a torch.profiler table of GPU kernels, fwd + bwd.

    python benchmarks/profile_kernels.py --families gla,delta,kda,deep_memory_steps_c64 --out DIR

For each family of ours (same cases and shapes as ``kernels.py``) it warms up, profiles one
forward + backward, and writes the top kernels by GPU time to ``DIR/profile.txt``. This is a
diagnosis tool (which kernel to work on), not a measurement: times come from ``kernels.py``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases  # noqa: E402
from harness import first_tensor  # noqa: E402


def _make(family: str) -> cases.Prepared:
    """The Prepared call of ours for one family name of ``kernels.py``."""
    s = cases.SHAPES["S"]
    if family.startswith("deep_memory_c"):
        return cases.ours_deep_memory(cases.MEMORY_SHAPE, int(family.removeprefix("deep_memory_c")))
    if family.startswith("deep_memory_steps_c"):
        return cases.ours_deep_memory(cases.MEMORY_SHAPE, int(family.removeprefix("deep_memory_steps_c")), steps=True)
    if family in ("simple_gla", "gla"):
        return cases.ours_gla(s, family)
    return cases.ours_delta(s, family)


def busy_line(events: list, wall_ms: float, host_ms: float) -> str:
    """One line from a profile's averaged GPU events (``key_averages()`` rows with a device
    time): launches, GPU kernel time, how busy the GPU was over the step's wall time, and how
    long the host took to issue the step. Kernel time well under the wall time while issuing
    takes about the wall time means the host (Python, Triton's launch path) is the bottleneck."""
    def device_ms(evt) -> float:  # noqa: ANN001 - torch's FunctionEventAvg (renamed fields)
        us = getattr(evt, "self_device_time_total", None)
        return (us if us is not None else getattr(evt, "self_cuda_time_total", 0.0)) / 1e3

    kernels = [e for e in events if device_ms(e) > 0]
    gpu = sum(device_ms(e) for e in kernels)
    launches = sum(e.count for e in kernels)
    busy = 100.0 * gpu / wall_ms if wall_ms > 0 else 0.0
    return (f"wall {wall_ms:.3f} ms, GPU kernels {gpu:.3f} ms ({busy:.0f}% busy), "
            f"{launches} kernel launches, host issue {host_ms:.3f} ms")


def _median_ms(fn, sync: bool, n: int = 5) -> float:  # noqa: ANN001
    """Median wall time of ``fn`` in ms, with or without waiting for the GPU."""
    times = []
    for _ in range(n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    return sorted(times)[n // 2]


def profile_family(family: str, rows: int) -> str:
    """One profiled fwd + bwd after two warm-up rounds; the kernel table as text, after a line
    that says whether the GPU or the host bounds the step (:func:`busy_line`)."""
    prep = _make(family)
    do = torch.randn_like(first_tensor(prep.fn()))

    def step() -> None:
        for x in prep.leaves:
            x.grad = None
        first_tensor(prep.fn()).backward(do)

    for _ in range(2):
        step()
    wall, host = _median_ms(step, sync=True), _median_ms(step, sync=False)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    averages = prof.key_averages()
    table = averages.table(sort_by="cuda_time_total", row_limit=rows)
    return f"## {family}\n{busy_line(list(averages), wall, host)}\n{table}\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="gla,delta,gated_delta,kda,deep_memory_steps_c64,deep_memory_c64")
    ap.add_argument("--rows", type=int, default=14)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    text = []
    for fam in args.families.split(","):
        try:
            text.append(profile_family(fam, args.rows))
        except Exception as exc:  # a failing family is reported, the others still run
            text.append(f"## {fam}\nfailed: {type(exc).__name__}: {exc}\n")
        print(text[-1], flush=True)
        torch.cuda.empty_cache()
    Path(args.out, "profile.txt").write_text("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
