"""Autotuning of launch shapes (warps, pipeline stages) for the Triton kernels.

Launch shapes are tuned; tile sizes only where a tile splits independent outputs (the value
block of a state pass: each program owns its columns of the state), so every candidate computes
the same numbers. The first candidate of each list is the hand-picked default. Under
``TRITON_INTERPRET=1`` (CI's CPU, where warps and stages mean nothing) only that default
exists, so nothing is benchmarked, unless ``MIRAS_TUNE_ALL=1`` keeps every candidate (set by
``benchmarks/traffic.py --configs least``, which picks among them by counted bytes).
Kernels that read back what they write (read-modify-write partials) name those arguments in
``restore_value`` so that the autotuner's trial runs leave no trace.
``compile_check.compile_all`` compiles every candidate for sm_90 and checks shared memory.
"""
from __future__ import annotations

import os

import triton


def interpreted() -> bool:
    """True when Triton runs kernels in its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def candidates(*shapes: tuple) -> list[triton.Config]:
    """``triton.Config`` list from ``(num_warps, num_stages)`` pairs, or ``(num_warps,
    num_stages, {tile: size})`` triples; the first is the default."""
    keep_all = os.environ.get("MIRAS_TUNE_ALL") == "1"
    chosen = shapes[:1] if interpreted() and not keep_all else shapes
    return [triton.Config(dict(rest[0]) if rest else {}, num_warps=w, num_stages=s)
            for w, s, *rest in chosen]


def autotune(key: list[str], shapes: tuple[tuple, ...], restore: list[str] | None = None):
    """``triton.autotune`` over launch shapes, re-tuned when any argument named in ``key`` changes."""
    return triton.autotune(configs=candidates(*shapes), key=key, restore_value=restore or [])
