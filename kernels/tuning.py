"""Autotuning of launch shapes (warps, pipeline stages) for the Triton kernels.

Only launch shapes are tuned, never tile sizes, so every candidate computes the same numbers;
the first candidate of each list is the hand-picked default. Under ``TRITON_INTERPRET=1`` (CI's
CPU, where warps and stages mean nothing) only that default exists, so nothing is benchmarked.
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


def candidates(*shapes: tuple[int, int]) -> list[triton.Config]:
    """``triton.Config`` list from ``(num_warps, num_stages)`` pairs; the first is the default."""
    chosen = shapes[:1] if interpreted() else shapes
    return [triton.Config({}, num_warps=w, num_stages=s) for w, s in chosen]


def autotune(key: list[str], shapes: tuple[tuple[int, int], ...],
             restore: list[str] | None = None):
    """``triton.autotune`` over launch shapes, re-tuned when any argument named in ``key`` changes."""
    return triton.autotune(configs=candidates(*shapes), key=key, restore_value=restore or [])
