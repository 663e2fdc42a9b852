"""Autotuning never changes results: the tuner's trial runs leave no trace (kernels/tuning.py).

On the GPU every autotuned kernel is run once per candidate before the chosen one runs for real.
Kernels that add into partials must have those restored in between (``restore_value``). Here
every autotuner gets two candidates and a "benchmark" that runs the kernel three times; the
results must equal, bit for bit, those of a plain run.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import pytest
import torch
import torch.nn.functional as F
import triton
from triton.runtime.autotuner import Autotuner

from mirasdsl.kernels import tuning
from mirasdsl.kernels.deep_memory import _step_bwd, _step_fwd
from mirasdsl.kernels.deep_memory import chunk as dm_chunk
from mirasdsl.kernels.deep_memory.chunk import triton_deep_memory
from mirasdsl.kernels.deep_memory.config import DeepMemoryConfig
from mirasdsl.kernels.delta import _tl_bwd, _tl_fwd
from mirasdsl.kernels.delta.chunk import chunk_delta_rule
from mirasdsl.kernels.gla import chunk as gla_chunk

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def autotuners(*modules: object) -> list[Autotuner]:
    """Every autotuned kernel defined in ``modules``."""
    return [obj for m in modules for obj in vars(m).values() if isinstance(obj, Autotuner)]


@contextlib.contextmanager
def trial_runs(tuners: list[Autotuner], repeats: int = 3) -> Iterator[None]:
    """Two candidates per kernel and a benchmark that runs each ``repeats`` times."""
    def bench(kernel_call, quantiles):  # noqa: ANN001 - triton's benchmarker signature
        for _ in range(repeats):
            kernel_call()
        return [1.0, 1.0, 1.0]

    saved = [(t, t.configs, t.__dict__.get("do_bench"), dict(t.cache)) for t in tuners]
    for t in tuners:
        tiles = dict(t.configs[0].kwargs)  # tuned tile sizes (a state pass's BV) kept
        t.configs = [triton.Config(tiles, num_warps=4, num_stages=3),
                     triton.Config(tiles, num_warps=2, num_stages=1)]
        t.__dict__["do_bench"] = bench  # the autotuner's cached benchmarker
        t.cache.clear()
    try:
        yield
    finally:
        for t, configs, do_bench, cache in saved:
            t.configs = configs
            t.cache.clear()
            t.cache.update(cache)
            if do_bench is None:
                t.__dict__.pop("do_bench", None)
            else:
                t.__dict__["do_bench"] = do_bench


def grads_of(fn, inputs: dict[str, torch.Tensor | None]) -> list[torch.Tensor]:
    """Output, final state and the gradient of every input of one fwd + bwd."""
    leaves = {n: x.clone().requires_grad_(True) for n, x in inputs.items() if x is not None}
    o, s = fn(**leaves)
    gen = torch.Generator().manual_seed(5)
    loss = (o * torch.randn(o.shape, generator=gen).to(o)).sum() + s.square().sum()
    return [o.detach(), s.detach(), *torch.autograd.grad(loss, list(leaves.values()))]


def _inputs(gate: str, k: int, v: int, delta: bool) -> dict[str, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(1)
    b, t, h = 2, 75, 2
    rnd = lambda *s: torch.randn(*s, generator=gen).to(DEVICE)  # noqa: E731
    shape = {"none": None, "scalar": (b, t, h), "channel": (b, t, h, k)}[gate]
    x = {"q": rnd(b, t, h, k), "k": F.normalize(rnd(b, t, h, k), dim=-1), "v": rnd(b, t, h, v),
         "g": None if shape is None else F.logsigmoid(rnd(*shape) + 3.0),
         "initial_state": rnd(b, h, k, v)}
    if delta:
        x["beta"] = torch.sigmoid(rnd(b, t, h))
    return x


def test_every_hot_kernel_is_autotuned_with_the_default_first() -> None:
    tuners = autotuners(gla_chunk, _tl_fwd, _tl_bwd, _step_fwd, _step_bwd, dm_chunk)
    names = {t.base_fn.__name__ for t in tuners}
    assert {"_readout_fwd_kernel", "_readout_bwd_kernel", "_bias_kernel", "_bwd_bias_kernel"} <= names
    assert {"_intra_kernel", "_bwd_intra_kernel", "_intra_dense_kernel",
            "_bwd_inter_kernel", "solve_kernel",
            "wy_bwd_kernel", "qk_bwd_kernel", "intra_bwd_channel_kernel", "state_fwd_kernel", "_keys_kernel",
            "_update_kernel", "_bwd_hidden_kernel", "_bwd_keys_kernel"} <= names
    if tuning.interpreted():  # one candidate only: the interpreter benchmarks nothing
        assert all(len(t.configs) == 1 for t in tuners)


def test_tune_all_keeps_every_candidate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the interpreter only the first candidate exists, unless ``MIRAS_TUNE_ALL=1``
    (traffic.py --configs least) keeps them all, in order."""
    shapes = ((4, 2), (8, 1, {"BV": 128}))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("MIRAS_TUNE_ALL", raising=False)
    assert [c.num_warps for c in tuning.candidates(*shapes)] == [4]
    monkeypatch.setenv("MIRAS_TUNE_ALL", "1")
    kept = tuning.candidates(*shapes)
    assert [(c.num_warps, c.num_stages, c.kwargs) for c in kept] == [(4, 2, {}), (8, 1, {"BV": 128})]


@pytest.mark.parametrize("gate", ["none", "scalar", "channel"])
def test_delta_rule_trial_runs_leave_no_trace(gate: str) -> None:
    x = _inputs(gate, 20, 12, delta=True)

    def fn(**kw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return chunk_delta_rule(kw["q"], kw["k"], kw["v"], kw["beta"], kw.get("g"),
                                initial_state=kw["initial_state"], output_final_state=True)

    plain = grads_of(fn, x)
    with trial_runs(autotuners(_tl_fwd, _tl_bwd)):
        tuned = grads_of(fn, x)
    for a, b in zip(tuned, plain):
        assert torch.equal(a, b)


@pytest.mark.parametrize("gate", ["none", "scalar", "channel"])
def test_gla_trial_runs_leave_no_trace(gate: str) -> None:
    x = _inputs(gate, 20, 12, delta=False)

    def fn(**kw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return gla_chunk.chunk_gla(kw["q"], kw["k"], kw["v"], kw.get("g"),
                                   initial_state=kw["initial_state"], output_final_state=True)

    plain = grads_of(fn, x)
    with trial_runs(autotuners(gla_chunk)):
        tuned = grads_of(fn, x)
    for a, b in zip(tuned, plain):
        assert torch.equal(a, b)


def test_deep_memory_step_trial_runs_leave_no_trace() -> None:
    """The fused chunk step's kernels (the backward ones add into partials) and the read-outs
    under trial runs."""
    gen = torch.Generator().manual_seed(4)
    rnd = lambda *s: torch.randn(*s, generator=gen).to(DEVICE)  # noqa: E731
    B, T, H, D, HD = 1, 20, 2, 8, 24
    cfg = DeepMemoryConfig(depth=2, hidden=HD, residual=True, norm=True, momentum=True, chunk_size=16)
    x = {"q": rnd(B, T, H, D), "k": F.normalize(rnd(B, T, H, D), dim=-1), "v": rnd(B, T, H, D),
         "eta": 0.1 * rnd(B, T, H).sigmoid(), "w1": rnd(H, D, HD) * 0.3, "w2": rnd(H, HD, D) * 0.2,
         "g": F.logsigmoid(rnd(B, T, H) + 3), "mu": 0.9 * rnd(B, T, H).sigmoid()}

    def run() -> list[torch.Tensor]:
        t = {n: v.clone().requires_grad_(True) for n, v in x.items()}
        o, st = triton_deep_memory(t["q"], t["k"], t["v"], t["eta"], (t["w1"], t["w2"]), cfg,
                                   g=t["g"], mu=t["mu"], output_final_state=True)
        g = torch.Generator().manual_seed(5)
        loss = (o * torch.randn(o.shape, generator=g).to(o)).sum() + sum(w.square().sum() for w in st.weights)
        return [o.detach(), *torch.autograd.grad(loss, list(t.values()))]

    plain = run()
    with trial_runs(autotuners(_step_fwd, _step_bwd, dm_chunk)):
        tuned = run()
    for a, b in zip(tuned, plain):
        assert torch.equal(a, b)


def test_deep_memory_step_form_trial_runs_leave_no_trace() -> None:
    """The step form's Triton keys and reads (steps of several tokens): the keys' hidden
    backward kernel and the sums' backward add into dk, dW and d(dmat); trial runs must not."""
    from mirasdsl.kernels.deep_memory import _steps_keys, _steps_read
    from mirasdsl.kernels.deep_memory.steps import step_deep_memory

    gen = torch.Generator().manual_seed(6)
    rnd = lambda *s: torch.randn(*s, generator=gen).to(DEVICE)  # noqa: E731
    B, T, H, D, HD = 1, 21, 2, 8, 24
    cfg = DeepMemoryConfig(depth=2, hidden=HD, residual=True, norm=True, momentum=True, chunk_size=16, step=4)
    x = {"q": rnd(B, T, H, D), "k": F.normalize(rnd(B, T, H, D), dim=-1), "v": rnd(B, T, H, D),
         "eta": 0.1 * rnd(B, T, H).sigmoid(), "w1": rnd(H, D, HD) * 0.3, "w2": rnd(H, HD, D) * 0.2,
         "g": F.logsigmoid(rnd(B, T, H) + 3), "mu": 0.9 * rnd(B, T, H).sigmoid()}

    def run() -> list[torch.Tensor]:
        t = {n: v.clone().requires_grad_(True) for n, v in x.items()}
        o, st = step_deep_memory(t["q"], t["k"], t["v"], t["eta"], (t["w1"], t["w2"]), cfg, g=t["g"], mu=t["mu"],
                                 output_final_state=True, use_triton=True)
        g = torch.Generator().manual_seed(5)
        loss = (o * torch.randn(o.shape, generator=g).to(o)).sum() + sum(w.square().sum() for w in st.weights)
        return [o.detach(), *torch.autograd.grad(loss, list(t.values()))]

    plain = run()
    with trial_runs(autotuners(_steps_keys, _steps_read)):
        tuned = run()
    for a, b in zip(tuned, plain):  # atomic adds: bit for bit on the CPU, within rounding on a GPU
        assert torch.equal(a, b) if DEVICE == "cpu" else torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_pinned_launches_the_chosen_candidate_and_restores() -> None:
    """``tuning.pinned(i)``: every autotuned kernel runs its candidate i (modulo its count, from
    the full list also under the interpreter) untuned, and gets its own list back afterwards."""
    before = {t: list(t.configs) for t in tuning.tuned_kernels()}
    full = {t: tuning.all_candidates(t) for t in tuning.tuned_kernels()}
    assert len(full[_tl_fwd.state_fwd_kernel]) == len(_tl_fwd.STATE_PASS_SHAPES) > 1
    inputs = _inputs("scalar", 16, 16, delta=True)
    with tuning.pinned(6):
        for t in tuning.tuned_kernels():
            assert t.configs == [full[t][6 % len(full[t])]] and not t.cache
        chunk_delta_rule(**inputs)
        assert _tl_fwd.state_fwd_kernel.best_config.kwargs == {"BV": 128}
    assert {t: list(t.configs) for t in tuning.tuned_kernels()} == before
