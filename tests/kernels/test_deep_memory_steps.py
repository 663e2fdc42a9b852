"""Deep memory with steps of several tokens (``DeepMemoryConfig.step``): the step-parallel form
against the token loop, an independent cross-check with the chunk-wise backend, state across
calls, dispatch and validation; titans-pytorch's ``NeuralMemory`` where it is installed.

Comparisons cover the output, the final state (weights and momentum) and the gradients of every
input, relative RMS error <= 1e-5 in float32 and <= 1e-10 in float64.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import subprocess
import sys

import pytest
import torch

from mirasdsl.kernels.deep_memory import (
    DeepMemoryConfig, chunk_deep_memory, deep_memory, recurrent_deep_memory, step_deep_memory,
)
from tests.helpers import ROOT
from tests.kernels.test_deep_memory import CALM, assert_close, leaves, make_inputs, run

C = DeepMemoryConfig
CASES = [
    # (config, T, K, with initial state, input ranges): T leaves a partial last step and span
    (C(depth=2, bias="l2", momentum=True, chunk_size=16, step=4), 37, 12, False, {}),
    (C(depth=2, bias="l2", chunk_size=12, step=3), 37, 12, True, {}),
    (C(depth=1, bias="dot", retention_global="l2", chunk_size=16, step=8), 41, 12, False, {}),
    (C(depth=2, bias="huber", momentum=True, chunk_size=64, step=16), 45, 20, True, {}),
    (C(depth=2, bias="huber", huber_delta=0.7, retention_global="l2", chunk_size=8, step=8), 37, 12, False, {}),
    (C(depth=3, bias="lp", p=3.0, momentum=True, activation="silu", chunk_size=6, step=2), 37, 12, False, {}),
    (C(depth=2, bias="robust", robust_radius=0.4, chunk_size=16, step=4), 37, 12, False, {}),
    (C(depth=2, bias="l2", norm=True, residual=True, momentum=True, chunk_size=16, step=4), 37, 12, False, CALM),
    (C(depth=2, bias="l2", retention_global="lq", q_norm=4.0, momentum=True, chunk_size=8, step=4), 37, 12, False, CALM),
    (C(depth=1, bias="l2", retention_global="kl", kl_scale=2.0, chunk_size=16, step=4), 37, 12, True, {}),
    (C(depth=2, bias="l2", momentum=True, chunk_size=8, step=4), 3, 12, True, {}),  # shorter than a step
    (C(depth=2, bias="l2", chunk_size=8, step=4), 4, 12, False, {}),  # exactly one step
]
IDS = [f"case{i}-{c.bias}-{c.retention_global}-d{c.depth}-C{c.chunk_size}-S{c.step}{'-mom' if c.momentum else ''}"
       for i, (c, *_rest) in enumerate(CASES)]


@pytest.mark.parametrize("cfg, T, K, with_state, ranges", CASES, ids=IDS)
def test_step_form_matches_token_loop(cfg, T, K, with_state, ranges):
    args, kw = make_inputs(cfg, T, K=K, V=K if cfg.residual else 12, with_state=with_state, **ranges)
    assert_close(run(step_deep_memory, cfg, args, kw), run(recurrent_deep_memory, cfg, args, kw))


@pytest.mark.parametrize("cfg, T, K, with_state, ranges", CASES[:4], ids=IDS[:4])
def test_step_form_matches_token_loop_float64(cfg, T, K, with_state, ranges):
    args, kw = make_inputs(cfg, T, K=K, with_state=with_state, **ranges)
    to64 = lambda x: x.detach().double().requires_grad_(True)  # noqa: E731
    args = (*(to64(a) for a in args[:4]), tuple(to64(w) for w in args[4]))
    kw = {n: (to64(x) if isinstance(x, torch.Tensor) else x) for n, x in kw.items()}
    if "initial_state" in kw:
        st = kw["initial_state"]
        kw["initial_state"] = type(st)(tuple(to64(w) for w in st.weights),
                                       None if st.momentum is None else tuple(to64(z) for z in st.momentum))
    assert_close(run(step_deep_memory, cfg, args, kw), run(recurrent_deep_memory, cfg, args, kw), tol=1e-10)


def test_one_step_per_chunk_equals_chunkwise_end_of_chunk():
    """Without retention or momentum, a step's summed gradient at the chunk's start weights is
    where the chunk-wise model (a step per token, every gradient at the chunk's start) stands
    after the chunk: the chunk backend's final state and its reads at each chunk's last token
    equal the step form's, an independent implementation of the same weights."""
    cfg1 = C(depth=2, bias="huber", huber_delta=0.5, chunk_size=8)
    cfgS = dataclasses.replace(cfg1, step=8)
    args, kw = make_inputs(cfg1, 40, K=12)
    kw["g"] = None  # no retention
    o1, st1, g1 = run(chunk_deep_memory, cfg1, args, kw)
    oS, stS = step_deep_memory(*args, cfgS, **kw, output_final_state=True)
    ends = list(range(7, 40, 8))
    assert (oS[:, ends] - o1[:, ends]).abs().max() <= 1e-5 * o1.abs().max()
    for a, b in zip(stS.weights, st1):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    assert (oS[:, 3] - o1[:, 3]).abs().max() > 1e-3  # inside a step the reads differ (lagging weights)


def test_state_across_calls_equals_one_call():
    """Two calls split at a span boundary (the second starting from the first's final state)
    equal one call: output and final weights and momentum."""
    cfg = C(depth=2, bias="l2", momentum=True, retention_global="l2", chunk_size=12, step=4)
    args, kw = make_inputs(cfg, 30, K=12)
    with torch.no_grad():
        o, st = step_deep_memory(*args, cfg, **kw, output_final_state=True)
        cut = lambda x, s: x[:, s] if isinstance(x, torch.Tensor) else x  # noqa: E731
        a1 = (*(x[:, :24] for x in args[:4]), args[4])
        o1, st1 = step_deep_memory(*a1, cfg, **{n: cut(x, slice(0, 24)) for n, x in kw.items()},
                                   output_final_state=True)
        a2 = (*(x[:, 24:] for x in args[:4]), args[4])
        o2, st2 = step_deep_memory(*a2, cfg, **{n: cut(x, slice(24, None)) for n, x in kw.items()},
                                   initial_state=st1, output_final_state=True)
    assert torch.allclose(torch.cat([o1, o2], 1), o, atol=1e-5, rtol=1e-5)
    for a, b in zip(st2.weights + st2.momentum, st.weights + st.momentum):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_without_final_state_momentum_is_not_formed():
    cfg = C(depth=1, bias="l2", momentum=True, chunk_size=16, step=4)
    args, kw = make_inputs(cfg, 20, K=12)
    o, st = step_deep_memory(*args, cfg, **kw)
    o_full, _ = step_deep_memory(*args, cfg, **kw, output_final_state=True)
    assert st is None and torch.equal(o, o_full)


@pytest.mark.parametrize("backend", ["chunk", "triton"])
def test_dispatch_routes_steps_to_the_step_form(backend, monkeypatch):
    """Both fast backends run the step form for step > 1 (the Triton chunk loop computes the
    token-step recurrence only); the naive backend runs the token loop."""
    import mirasdsl.kernels.deep_memory as dm

    cfg = C(depth=1, bias="l2", chunk_size=8, step=4)
    called = []
    monkeypatch.setattr(dm, "step_deep_memory", lambda *a, **k: called.append("steps") or (a[0], None))
    dm.deep_memory(*make_inputs(cfg, 8, K=12)[0], cfg, backend=backend)
    assert called == ["steps"]
    args, kw = make_inputs(cfg, 8, K=12)
    o, _ = deep_memory(*args, cfg, **kw, backend="naive")
    assert torch.allclose(o, recurrent_deep_memory(*args, cfg, **kw)[0])


def test_bf16_inputs_stay_close_to_float32():
    cfg = C(depth=2, bias="l2", momentum=True, chunk_size=32, step=8)
    args, kw = make_inputs(cfg, 40, K=12)
    with torch.no_grad():
        ref, _ = step_deep_memory(*args, cfg, **kw)
        bf = [a.bfloat16() for a in args[:4]]
        got, _ = step_deep_memory(*bf, args[4], cfg, **{n: x.bfloat16() for n, x in kw.items()})
    assert got.dtype == torch.bfloat16
    assert ((got.float() - ref).norm() / ref.norm()).item() < 3e-2


@pytest.mark.parametrize("fields, fragment", [
    ({"chunk_size": 16, "step": 5}, "dividing chunk_size=16"),
    ({"chunk_size": 16, "step": 0}, "step must be an integer >= 1"),
    ({"chunk_size": 8, "step": 4, "retention_global": "elastic_net", "l1": 0.1}, "elastic_net"),
])
def test_config_refuses_bad_steps(fields, fragment):
    with pytest.raises(ValueError, match=fragment):
        C(**fields)


@pytest.mark.skipif(importlib.util.find_spec("titans_pytorch") is None, reason="titans-pytorch not installed")
def test_matches_titans_pytorch():
    """titans-pytorch's NeuralMemory (chunk_size=S, batch_size=None) is the step form with
    chunk_size >= T: outputs and every parameter's gradient agree in float64."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/titans_equivalence.py"), "--tokens", "48"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok" in out.stdout.splitlines()[-1]


def test_leaves_helper_covers_every_input():  # guards the shared helper this file relies on
    cfg = C(depth=2, bias="huber", momentum=True, retention_global="l2", chunk_size=8, step=4)
    args, kw = make_inputs(cfg, 9, K=12, with_state=True)
    assert len(leaves(args, kw)) == 4 + 4 + 2 + 2  # q k v eta, g mu lam delta, state W (2), state Z (2)


def test_packed_sequences_equal_separate_calls():
    """cu_seqlens with steps: every packed sequence starts its spans and steps afresh."""
    cfg = C(depth=2, bias="l2", momentum=True, chunk_size=8, step=4)
    args, kw = make_inputs(cfg, 23, B=1, K=12)
    bounds = [0, 6, 6, 17, 23]  # an empty sequence and partial steps included
    with torch.no_grad():
        o, st = deep_memory(*args, cfg, **kw, output_final_state=True, backend="chunk",
                            cu_seqlens=torch.tensor(bounds))
        for i, (t0, t1) in enumerate(zip(bounds[:-1], bounds[1:])):
            if t1 == t0:
                continue
            part = lambda x: x[:, t0:t1] if isinstance(x, torch.Tensor) else x  # noqa: E731
            o_i, st_i = step_deep_memory(*(part(a) for a in args[:4]), args[4], cfg,
                                         **{n: part(x) for n, x in kw.items()}, output_final_state=True)
            assert torch.allclose(o[:, t0:t1], o_i, atol=1e-6)
            for a, b in zip(st.weights + st.momentum, st_i.weights + st_i.momentum):
                assert torch.allclose(a[i:i + 1], b, atol=1e-6)


@pytest.mark.parametrize("cfg", [
    C(depth=2, bias="l2", momentum=True, norm=True, residual=True, chunk_size=16, step=4),
    C(depth=2, bias="huber", activation="silu", retention_global="l2", chunk_size=12, step=6),
    C(depth=2, bias="dot", activation="relu", norm=True, chunk_size=8, step=8),
], ids=["mom-norm-res", "huber-silu-l2", "dot-relu-norm"])
def test_triton_reads_match_torch_reads(cfg):
    """The Triton backend's reads (``_steps_read.py``, interpreter on the CPU) against the
    PyTorch reads: output, final state and every gradient, float32 (T = 37: partial steps)."""
    args, kw = make_inputs(cfg, 37, K=12, V=12 if cfg.residual else 10, hidden=20, with_state=True)
    got = run(functools.partial(step_deep_memory, use_triton=True), cfg, args, kw)
    assert_close(got, run(step_deep_memory, cfg, args, kw))


def test_triton_backend_reads_through_the_kernels(monkeypatch):
    """deep_memory(backend="triton") with steps runs StepsRead; shapes it does not take (depth 1)
    fall back to the PyTorch reads."""
    from mirasdsl.kernels.deep_memory import _steps_read

    calls = []
    real = _steps_read.StepsRead.apply
    monkeypatch.setattr(_steps_read.StepsRead, "apply", lambda *a: calls.append(1) or real(*a))
    cfg = C(depth=2, bias="l2", chunk_size=8, step=4)
    args, kw = make_inputs(cfg, 9, K=12)
    deep_memory(*args, cfg, **kw, backend="triton")
    assert calls == [1, 1]  # one call per chunk
    cfg1 = C(depth=1, bias="l2", chunk_size=8, step=4)
    deep_memory(*make_inputs(cfg1, 9, K=12)[0], cfg1, backend="triton")
    assert calls == [1, 1]


@pytest.mark.parametrize("cfg", [
    C(depth=2, bias="lp", p=3.0, momentum=True, chunk_size=16, step=4),
    C(depth=2, bias="robust", robust_radius=0.5, norm=True, chunk_size=16, step=8),
    C(depth=2, bias="huber", activation="silu", residual=True, chunk_size=12, step=6),
    C(depth=2, bias="l2", retention_global="kl", kl_scale=2.0, chunk_size=16, step=4),
    C(depth=2, bias="l2", momentum=True, norm=True, residual=True, chunk_size=128, step=64),
], ids=["lp-mom", "robust-norm", "huber-silu-res", "kl", "steps64-rowblocks"])
def test_triton_keys_match_torch_keys(cfg, monkeypatch):
    """The Triton backend's keys (``_steps_keys.py``: each step's gradient sums and, backward,
    their second derivatives; interpreter on the CPU) against the PyTorch keys, every bias, with
    the PyTorch or Triton reads: output, final state, every gradient (the huber threshold's too)."""
    from mirasdsl.kernels.deep_memory import _steps_keys

    calls = []
    real = _steps_keys.StepKeys.apply
    monkeypatch.setattr(_steps_keys.StepKeys, "apply", lambda *a: calls.append(1) or real(*a))
    T = 37 if cfg.step < 64 else 150  # steps of 64: the backward's two row blocks per step
    args, kw = make_inputs(cfg, T, K=12, V=12 if cfg.residual else 10, hidden=20, with_state=True)
    got = run(functools.partial(step_deep_memory, use_triton=True), cfg, args, kw)
    assert calls, "the Triton keys did not run"
    assert_close(got, run(step_deep_memory, cfg, args, kw))


def _titans_inputs(B: int, T: int, H: int, D: int, HD: int, seed: int) -> tuple[list, list, list]:
    """Titans-like inputs on the GPU: unit q, k; v; small eta; decay near 1; momentum."""
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen).cuda()  # noqa: E731
    base = [torch.nn.functional.normalize(rnd(B, T, H, D), dim=-1) for _ in range(2)]
    base += [rnd(B, T, H, D), 0.01 * rnd(B, T, H).sigmoid()]
    ws = [rnd(H, D, HD) * D ** -0.5, rnd(H, HD, D) * HD ** -0.5]
    extra = [torch.nn.functional.logsigmoid(rnd(B, T, H) + 4), 0.9 * rnd(B, T, H).sigmoid()]
    return base, ws, extra


def _run_steps(triton: bool, dtype: torch.dtype, cfg, base, ws, extra) -> list[torch.Tensor]:  # noqa: ANN001
    x = [t.to(torch.bfloat16).to(dtype).requires_grad_(True) for t in base]
    w = [t.clone().requires_grad_(True) for t in ws]
    gates = [t.clone().requires_grad_(True) for t in extra]  # decay (log), momentum
    o, _ = step_deep_memory(*x, tuple(w), cfg, g=gates[0], mu=gates[1], use_triton=triton)
    gen = torch.Generator().manual_seed(1)
    loss = (o.float() * torch.randn(o.shape, generator=gen).cuda()).sum()
    return [o.float().detach(), *torch.autograd.grad(loss, x + w + gates)]


@pytest.mark.gpu
@pytest.mark.parametrize("step", [64, 16])
def test_gpu_triton_steps_at_the_titans_size(step: int) -> None:
    """B=2, T=1024, 8 heads of 128, hidden 512, LayerNorm + residual, momentum, titans-pytorch's
    update (chunk = T): the Triton keys and reads against the PyTorch step form, float32 without
    TF32, output and every gradient within 1e-4 (a Hopper miscompile shows as a large error)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = C(depth=2, hidden=512, residual=True, norm=True, momentum=True, chunk_size=1024, step=step)
    data = _titans_inputs(2, 1024, 8, 128, 512, seed=3)
    got = _run_steps(True, torch.float32, cfg, *data)
    ref = _run_steps(False, torch.float32, cfg, *data)
    for a, b in zip(got, ref):
        assert torch.isfinite(a).all()
        err = ((a - b).norm() / b.norm()).item()
        assert err <= 1e-4, err


@pytest.mark.gpu
def test_gpu_triton_steps_bf16_within_tolerance() -> None:
    """bf16 inputs (tf32 dots in the kernels): :func:`_check_bf16` at B=2, T=1024, 8 heads of
    128, hidden 512, steps of 64."""
    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = C(depth=2, hidden=512, residual=True, norm=True, momentum=True, chunk_size=1024, step=64)
    _check_bf16(cfg, _titans_inputs(2, 1024, 8, 128, 512, seed=4))


def _check_bf16(cfg, data) -> None:  # noqa: ANN001
    """The Triton step form on bf16 inputs: output and the gradients of q, k, v, eta and the
    weights within 5e-3 of the float32 PyTorch form on the same rounded inputs; the gates'
    gradients within 5e-3 of the PyTorch form with the same bf16 inputs and output. (The gates'
    gradients sum many terms of both signs: the bf16 rounding of the output's gradient alone puts
    them 5.5-5.7e-3 from the float32 truth in some draws, in the PyTorch form as in ours; the
    kernels' own error is measured against that form.)"""
    got = _run_steps(True, torch.bfloat16, cfg, *data)
    truth = _run_steps(False, torch.float32, cfg, *data)
    same_io = _run_steps(False, torch.bfloat16, cfg, *data)
    n_gates = 2
    refs = truth[:-n_gates] + same_io[-n_gates:]
    for a, b in zip(got, refs):
        assert torch.isfinite(a).all()
        rel = ((a.float() - b.float()).pow(2).mean().sqrt() / b.float().pow(2).mean().sqrt()).item()
        assert rel <= 5e-3, rel


def test_triton_steps_bf16_with_tf32_dots_within_tolerance(monkeypatch):
    """:func:`_check_bf16` on the CPU (interpreter rounding tf32 dot operands as the GPU does),
    T = 256, 2 heads of 64, hidden 256, steps of 64 (2.6e-3 seen against the float32 truth, the
    gates included; with the step sums stored in bf16 the decay's gradient reached 4.5e-3)."""
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self: self)  # the helpers' .cuda(): stay here
    cfg = C(depth=2, hidden=256, residual=True, norm=True, momentum=True, chunk_size=256, step=64)
    _check_bf16(cfg, _titans_inputs(1, 256, 2, 64, 256, seed=4))


@pytest.mark.gpu
@pytest.mark.gpu_long
def test_gpu_triton_steps_long_bf16_and_titans_size_at_steps_of_16() -> None:
    """T = 65,536 in bf16 (chunks of 4096, steps of 64, 16 chunks one after another): finite,
    output and the q, k, v, eta, weight gradients within 5e-3 of the float32 PyTorch form on the
    same rounded inputs. Then titans-pytorch's benchmark size at steps of 16 (where titans-pytorch
    runs out of memory on 80 GB): forward + backward fit in 40 GiB."""
    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = C(depth=2, hidden=256, residual=True, norm=True, momentum=True, chunk_size=4096, step=64)
    data = _titans_inputs(1, 65536, 2, 64, 256, seed=7)
    got = _run_steps(True, torch.bfloat16, cfg, *data)
    ref = _run_steps(False, torch.float32, cfg, *data)
    for a, b in zip(got[:-2], ref[:-2]):  # the gates: see _check_bf16
        assert torch.isfinite(a).all()
        rel = ((a.float() - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()
        assert rel <= 5e-3, rel
    cfg16 = C(depth=2, hidden=512, residual=True, norm=True, momentum=True, chunk_size=4096, step=16)
    base, ws, extra = _titans_inputs(4, 4096, 8, 128, 512, seed=8)
    torch.cuda.reset_peak_memory_stats()
    x = [t.to(torch.bfloat16).requires_grad_(True) for t in base]
    o, _ = step_deep_memory(*x, tuple(ws), cfg16, g=extra[0], mu=extra[1], use_triton=True)
    o.float().square().mean().backward()
    assert torch.isfinite(x[0].grad).all()
    assert torch.cuda.max_memory_allocated() < 40 * 2**30
