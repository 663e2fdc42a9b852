"""Autotuning of launch shapes (warps, pipeline stages) for the Triton kernels.

Launch shapes are tuned; tile sizes only where a tile splits independent outputs (the value
block of a state pass: each program owns its columns of the state), so every candidate computes
the same numbers. The first candidate of each list is the hand-picked default. Under
``TRITON_INTERPRET=1`` (CI's CPU, where warps and stages mean nothing) only that default
exists, so nothing is benchmarked, unless ``MIRAS_TUNE_ALL=1`` keeps every candidate (set by
``benchmarks/traffic.py --configs least``, which picks among them by counted bytes).
Kernels that read back what they write (read-modify-write partials) name those arguments in
``restore_value`` so that the autotuner's trial runs leave no trace.
``compile_check.compile_all`` compiles every candidate for sm_90 and checks shared memory;
:func:`pinned` makes every kernel launch one chosen candidate, so that tests can check that
every candidate computes the same numbers (a compiler fault may hit one launch shape only: fla's
gated backward on Hopper with Triton 3.4-3.7.0 went wrong at one block width of three).
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import triton

# every autotuned kernel of ours (triton's Autotuner) with all its candidates (also those the
# interpreter leaves out), in import order
_TUNED: list[tuple[Any, list[triton.Config]]] = []


def interpreted() -> bool:
    """True when Triton runs kernels in its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def candidates(*shapes: tuple) -> list[triton.Config]:
    """``triton.Config`` list from ``(num_warps, num_stages)`` pairs, or ``(num_warps,
    num_stages, {tile: size})`` triples; the first is the default."""
    keep_all = os.environ.get("MIRAS_TUNE_ALL") == "1"
    return _configs(shapes[:1] if interpreted() and not keep_all else shapes)


def _configs(shapes: tuple[tuple, ...]) -> list[triton.Config]:
    return [triton.Config(dict(rest[0]) if rest else {}, num_warps=w, num_stages=s) for w, s, *rest in shapes]


def autotune(key: list[str], shapes: tuple[tuple, ...], restore: list[str] | None = None):
    """``triton.autotune`` over launch shapes, re-tuned when any argument named in ``key`` changes."""
    tune = triton.autotune(configs=candidates(*shapes), key=key, restore_value=restore or [])

    def registered(fn: Any) -> Any:
        tuner = tune(fn)
        _TUNED.append((tuner, _configs(shapes)))
        return tuner

    return registered


def tuned_kernels() -> list[Any]:
    """Every autotuned kernel of the modules imported so far."""
    return [t for t, _ in _TUNED]


def all_candidates(kernel: Any) -> list[triton.Config]:
    """Every candidate of an autotuned kernel of ours, also those the interpreter leaves out."""
    return next(list(full) for t, full in _TUNED if t is kernel)


def candidate_indices(tiles_only: bool = False) -> list[int]:
    """``0 .. n - 1`` for the longest candidate list of any autotuned kernel imported so far;
    with ``tiles_only``, only the indices at which some kernel's tile sizes differ from every
    earlier index's (the interpreter ignores warps and stages, not tile sizes)."""
    n = max((len(full) for _, full in _TUNED), default=1)
    if not tiles_only:
        return list(range(n))
    seen, out = set(), []
    for i in range(n):
        tiles = tuple(tuple(sorted(full[i % len(full)].kwargs.items())) for _, full in _TUNED)
        if tiles not in seen:
            seen.add(tiles)
            out.append(i)
    return out


@contextlib.contextmanager
def forced(choice: dict[Any, triton.Config]) -> Iterator[None]:
    """Inside the block each autotuned kernel in ``choice`` launches only the candidate given
    for it, untuned; afterwards each has its own list and tuning cache back."""
    saved = [(t, t.configs, t.cache) for t in choice]
    try:
        for t, config in choice.items():
            t.configs, t.cache = [config], {}
        yield
    finally:
        for t, configs, cache in saved:
            t.configs, t.cache = configs, cache


def pinned(index: int) -> contextlib.AbstractContextManager[None]:
    """:func:`forced` for every autotuned kernel: its candidate ``index`` (modulo its count, from
    its full list, also under the interpreter)."""
    return forced({t: full[index % len(full)] for t, full in _TUNED})
