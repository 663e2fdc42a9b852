"""Every autotune candidate computes the same numbers (``kernels/tuning.py``, ``pinned``).

On the GPU the autotuner picks each kernel's launch shape (warps, stages, a state pass's value
block) by time. A compiler fault can hit one shape only (fla's gated backward on Hopper with
Triton 3.4-3.7.0 went wrong at one block width of three; the device runs Triton 3.6), and the
benchmark would then time, and a model train with, a wrong kernel. Here each family's accuracy
check runs once per candidate index with every kernel pinned to that candidate: on the GPU at
real sizes (gpu marker, every index), on the CPU under the interpreter at tiny sizes (the
indices whose tile sizes differ; warps and stages mean nothing there). The real sizes keep the
benchmark's head counts and widths, so the device finds most candidates in the precompiled cache
(``benchmarks/precompile.sh``).
"""
from __future__ import annotations

from typing import Callable

import pytest
import torch

from mirasdsl.kernels import tuning
from mirasdsl.kernels.deep_memory.config import DeepMemoryConfig
from tests.kernels import test_deep_memory_step as dm_step_tests
from tests.kernels import test_deep_memory_steps as dm_steps_tests
from tests.kernels import test_delta as delta_tests
from tests.kernels import test_gla as gla_tests

GATES = ("none", "scalar", "channel")
FAMILIES = ([f"gla-{g}" for g in GATES] + [f"delta-{g}" for g in GATES] + ["deep_memory-64", "deep_memory-16",
            "deep_memory_steps"])


def _gla(gate: str, device: str, big: bool) -> None:
    T, H, D = (2048, 16, 128) if big else (70, 1, 16)
    gla_tests.bf16_case(1, T, H, D, gate, seed=31, device=device)


def _delta(gate: str, device: str, big: bool) -> None:
    T, H, D = (2048, 16, 128) if big else (70, 1, 16)
    delta_tests.device_case(T, gate, torch.bfloat16, b=1, h=H, d=D, device=device)


def _deep_memory(chunk: str, device: str, big: bool) -> None:
    widths = {"chunk": int(chunk)} if big else {"D": 16, "HD": 32, "chunk": int(chunk)}
    B, T, H = (2, 512, 8) if big else (1, 40, 1)
    dm_step_tests._assert_bf16_follows_float32(*dm_step_tests._titans_width(B, T, H, device, **widths))


def _deep_memory_steps(device: str, big: bool) -> None:
    B, T, H, D, HD, S = (2, 1024, 8, 128, 512, 64) if big else (1, 64, 1, 16, 32, 16)
    cfg = DeepMemoryConfig(depth=2, hidden=HD, residual=True, norm=True, momentum=True, chunk_size=T, step=S)
    dm_steps_tests._check_bf16(cfg, dm_steps_tests._titans_inputs(B, T, H, D, HD, seed=4))


def _check(family: str) -> Callable[[str, bool], None]:
    name, _, gate = family.partition("-")
    fn = {"gla": _gla, "delta": _delta, "deep_memory": _deep_memory, "deep_memory_steps": _deep_memory_steps}[name]
    return (lambda device, big: fn(gate, device, big)) if gate else fn


def _every_candidate(check: Callable[[], None], indices: list[int]) -> None:
    """``check()`` with every kernel pinned to candidate i, for each i; a failure names i and
    the launch shapes it pinned."""
    for i in indices:
        with tuning.pinned(i):
            try:
                check()
            except AssertionError as err:
                shapes = sorted({f"{t.fn.__name__}: {t.configs[0]}" for t in tuning.tuned_kernels()})
                raise AssertionError(f"autotune candidate {i}: {err}\npinned: {shapes}") from err


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_every_candidate_under_the_interpreter(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self: self)  # the steps helpers' .cuda(): stay here
    check = _check(family)
    check("cpu", False)  # imports the family's kernels, so that every one of them is pinned below
    _every_candidate(lambda: check("cpu", False), tuning.candidate_indices(tiles_only=True))


@pytest.mark.gpu
@pytest.mark.parametrize("family", FAMILIES)
def test_gpu_every_candidate_at_real_sizes(family: str) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    check = _check(family)
    check("cuda", True)
    _every_candidate(lambda: check("cuda", True), tuning.candidate_indices())
