"""Gated linear attention: the chunked PyTorch form and the Triton kernels against the token loop,
forward and every input gradient (q, k, v, g, initial state; the final state's gradient flows back)."""
from __future__ import annotations

import math

import pytest
import torch

from mirasdsl.kernels.gla import (chunk_gla, chunk_gla_torch, gated_linear_attention,
                                  recurrent_gla)

TOL_TORCH = 1e-5  # chunk_torch vs naive, fp32 relative RMS error
TOL_TRITON = 1e-4  # Triton fp32 vs naive
TOL_LOW = 5e-3  # Triton bf16 / fp16 vs an fp32 reference on the same rounded inputs

GATE_SHAPES = ("none", "scalar", "channel")
STRENGTHS = {"weak": 1e-3, "strong": -math.log(0.05)}  # mean -g: alpha ≈ 0.999 and ≈ 0.05


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def make_inputs(B: int, T: int, H: int, K: int, V: int, gate: str, strength: float,
                n_states: int | None = None, dtype: torch.dtype = torch.float32, seed: int = 0,
                device: str = "cpu") -> dict:
    """Random q, k, v, log-gates in [-2·strength, 0], an initial state; all leaves with grads."""
    gen = torch.Generator().manual_seed(seed)
    x = {"q": torch.randn(B, T, H, K, generator=gen), "k": torch.randn(B, T, H, K, generator=gen),
         "v": torch.randn(B, T, H, V, generator=gen),
         "initial_state": torch.randn(n_states or B, H, K, V, generator=gen)}
    shape = {"none": None, "scalar": (B, T, H), "channel": (B, T, H, K)}[gate]
    if shape is not None:
        x["g"] = -2 * strength * torch.rand(shape, generator=gen)
    return {n: t.to(device=device, dtype=dtype).requires_grad_(True) for n, t in x.items()}


def run_with_grads(fn, x: dict, seed: int = 1, **kwargs) -> dict:
    """Forward, then the gradients of ``<o, do> + <S_T, dS>`` for random ``do, dS``."""
    o, s = fn(x["q"], x["k"], x["v"], x.get("g"), initial_state=x["initial_state"],
              output_final_state=True, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    # bf16-representable cotangents: the same values reach a bf16 kernel and an fp32 reference
    do = torch.randn(o.shape, generator=gen).bfloat16().float().to(o.device)
    ds = torch.randn(s.shape, generator=gen).bfloat16().float().to(s.device)
    loss = (o.float() * do).sum() + (s.float() * ds).sum()
    names = list(x)
    grads = torch.autograd.grad(loss, [x[n] for n in names])
    return {"o": o, "final_state": s, **{f"d{n}": gr for n, gr in zip(names, grads)}}


def assert_close(got: dict, ref: dict, tol: float) -> None:
    """Every output and gradient within ``tol`` relative RMS error, and finite."""
    assert got.keys() == ref.keys()
    for name in ref:
        assert torch.isfinite(got[name]).all(), name
        err = rel_rms(got[name], ref[name])
        assert err <= tol, f"{name}: relative RMS error {err:.2e} > {tol:.0e}"


def as_fp32_leaves(x: dict) -> dict:
    """The same (already rounded) values in fp32, as fresh leaves."""
    return {n: t.detach().float().requires_grad_(True) for n, t in x.items()}


# ------------------------------------------------------------------ chunked PyTorch vs naive

@pytest.mark.parametrize("T", [63, 100])
@pytest.mark.parametrize("gate", GATE_SHAPES)
@pytest.mark.parametrize("strength", list(STRENGTHS))
def test_chunk_torch_matches_naive(T: int, gate: str, strength: str) -> None:
    if gate == "none" and strength == "strong":
        pytest.skip("no gate: the strength does not apply")
    x = make_inputs(2, T, 2, 60, 36, gate, STRENGTHS[strength])
    assert_close(run_with_grads(chunk_gla_torch, x), run_with_grads(recurrent_gla, x), TOL_TORCH)


@pytest.mark.parametrize("chunk_size", [16, 20, 32])
def test_chunk_torch_chunk_sizes(chunk_size: int) -> None:
    x = make_inputs(1, 45, 2, 24, 20, "channel", 0.5, seed=3)
    got = run_with_grads(chunk_gla_torch, x, chunk_size=chunk_size)
    assert_close(got, run_with_grads(recurrent_gla, x), TOL_TORCH)


@pytest.mark.parametrize("gate", ["scalar", "channel"])
def test_chunk_torch_cu_seqlens(gate: str) -> None:
    cu = torch.tensor([0, 17, 17, 81, 131])  # an empty sequence, one of exactly one chunk
    x = make_inputs(1, 131, 2, 60, 36, gate, 0.5, n_states=4, seed=4)
    got = run_with_grads(chunk_gla_torch, x, cu_seqlens=cu)
    assert_close(got, run_with_grads(recurrent_gla, x, cu_seqlens=cu), TOL_TORCH)


def test_cu_seqlens_equals_separate_sequences() -> None:
    """Packing restarts the state: each packed piece equals the sequence run on its own."""
    x = make_inputs(1, 40, 2, 8, 8, "channel", 0.3, n_states=2, seed=5)
    cu = torch.tensor([0, 15, 40])
    o, s = recurrent_gla(x["q"], x["k"], x["v"], x["g"], initial_state=x["initial_state"],
                         output_final_state=True, cu_seqlens=cu)
    for i, (a, b) in enumerate([(0, 15), (15, 40)]):
        oi, si = recurrent_gla(x["q"][:, a:b], x["k"][:, a:b], x["v"][:, a:b], x["g"][:, a:b],
                               initial_state=x["initial_state"][i:i + 1], output_final_state=True)
        assert torch.allclose(o[:, a:b], oi) and torch.allclose(s[i:i + 1], si)


@pytest.mark.parametrize("gate", ["scalar", "channel"])
@pytest.mark.parametrize("fn", [chunk_gla_torch, chunk_gla], ids=["chunk_torch", "triton"])
def test_extreme_decay_is_stable(fn, gate: str) -> None:
    """log-gates near -30 per step (e^{-30·64} underflows): nothing overflows, and the result is
    close to a float64 token loop. The cumulative log-gates reach ~-10³ inside a chunk, where
    fp32 spacing is ~1e-4, hence the looser tolerance."""
    x = make_inputs(1, 70, 1, 16, 8, gate, 15.0, seed=6)
    ref = run_with_grads(recurrent_gla, {n: t.detach().double().requires_grad_(True)
                                         for n, t in x.items()})
    assert_close(run_with_grads(fn, x, chunk_size=32), ref, 1e-4)


def test_naive_matches_definition() -> None:
    """The reference against o_t = scale · Σ_{s<=t} (q_t ⊙ Π_{s<r<=t} α_r) · k_s v_s, float64."""
    x = make_inputs(1, 9, 1, 4, 3, "channel", 0.5, dtype=torch.float64, seed=7)
    q, k, v, g = (x[n].detach()[0, :, 0] for n in ("q", "k", "v", "g"))
    o, _ = recurrent_gla(x["q"], x["k"], x["v"], x["g"])
    cum = g.cumsum(0)  # [T, K]
    ref = torch.stack([sum(((q[t] * k[s] * (cum[t] - cum[s]).exp()).sum() * v[s])
                           for s in range(t + 1)) for t in range(9)]) * 4 ** -0.5
    assert rel_rms(o.detach()[0, :, 0] - 0, ref) < 1e-12


def test_dispatch_backends_agree() -> None:
    x = make_inputs(1, 21, 2, 16, 16, "channel", 0.2, seed=8)
    args = (x["q"], x["k"], x["v"], x["g"])
    ref, _ = gated_linear_attention(*args, backend="naive")
    for backend in ("chunk", "triton"):
        o, s = gated_linear_attention(*args, backend=backend, chunk_size=16)
        assert s is None and rel_rms(o, ref) < TOL_TRITON, backend


def test_bad_shapes_raise() -> None:
    x = make_inputs(2, 8, 1, 4, 4, "none", 0.0)
    with pytest.raises(ValueError, match="cu_seqlens needs B == 1"):
        chunk_gla_torch(x["q"], x["k"], x["v"], cu_seqlens=torch.tensor([0, 8]))
    with pytest.raises(ValueError, match="g must be"):
        recurrent_gla(x["q"], x["k"], x["v"], torch.zeros(2, 8, 3))


# ------------------------------------------------------------------ Triton (interpreter on CPU)

@pytest.mark.parametrize("gate", GATE_SHAPES)
@pytest.mark.parametrize("strength", list(STRENGTHS))
def test_triton_matches_naive(gate: str, strength: str) -> None:
    if gate == "none" and strength == "strong":
        pytest.skip("no gate: the strength does not apply")
    x = make_inputs(2, 37, 2, 20, 12, gate, STRENGTHS[strength], seed=10)
    got = run_with_grads(chunk_gla, x, chunk_size=16)
    assert_close(got, run_with_grads(recurrent_gla, x), TOL_TRITON)


@pytest.mark.parametrize("gate", GATE_SHAPES)
def test_triton_one_partial_chunk_wide_heads(gate: str) -> None:
    """T below the chunk (64), K and V above one tile (64) and not powers of two (a scalar
    gate's dg is summed over two K tiles)."""
    x = make_inputs(1, 37, 1, 72, 80, gate, 1.0, seed=11)
    got = run_with_grads(chunk_gla, x, chunk_size=64)
    assert_close(got, run_with_grads(recurrent_gla, x), TOL_TRITON)


def test_triton_diagonal_blocks_dense_and_exact() -> None:
    """Per-channel gates: sub-chunks whose gates fall by less than ``DENSE_SPAN`` (30 nats)
    take the dense form of their diagonal block (one matmul; one of them near the limit, ~25
    nats), one with a stretch of strong decay (~70 nats) the element-by-element loop; chunk 64,
    so each sub-chunk also has earlier and later neighbours. Forward and every gradient against
    the token loop."""
    from mirasdsl.kernels.gla import chunk as gla_chunk

    x = make_inputs(1, 100, 2, 24, 12, "channel", 0.5, seed=16)  # ~8 nats per 16 rows
    with torch.no_grad():
        x["g"][:, 20:30] *= 14.0  # sub-chunk 1 of chunk 0: ~70 nats
        x["g"][:, 70:78, 1] -= 1.8  # sub-chunk 0 of chunk 1, head 1: ~25 nats
    fall = [x["g"][0, i:i + 16].sum(0).neg() for i in (0, 16, 64)]  # [H, K] each
    limit = gla_chunk.DENSE_SPAN.value
    assert fall[0].max() < limit < fall[1].amax(1).min() and 20 < fall[2].max() < limit
    got = run_with_grads(chunk_gla, x, chunk_size=64)
    assert_close(got, run_with_grads(recurrent_gla, x), TOL_TRITON)


def test_triton_bf16_channel_gates_dense_diagonal() -> None:
    """bf16, per-channel gates falling ~16 nats per sub-chunk (the dense diagonal blocks), T = 70,
    K = V = 32, against the float32 token loop on the same rounded inputs, at the issue's 5e-3:
    with the dense blocks' matmul operands in bf16 the gates' gradient was 1.5-1.7e-2 off (the
    diagonal terms dominate dg, which cancels); in float32 (tf32 on the GPU) 2.6e-3."""
    x = make_inputs(1, 70, 2, 32, 32, "channel", 1.0, seed=0)
    lo = {n: (t.detach().to(torch.bfloat16) if n != "initial_state" else t.detach()).requires_grad_(True)
          for n, t in x.items()}
    rounded = {n: t.detach().float().requires_grad_(True) for n, t in lo.items()}
    got = run_with_grads(chunk_gla, lo, chunk_size=64)
    assert_close({n: t.float() for n, t in got.items()}, run_with_grads(recurrent_gla, rounded), 5e-3)


@pytest.mark.parametrize("gate", GATE_SHAPES)
def test_triton_wide_value_tiles(gate: str) -> None:
    """The tuned wide value tile (WIDE=1: 2·64 columns for V = 80, masked) of the output, dv and
    state-pass kernels gives the reference's numbers; the interpreter runs only the default, so
    force it."""
    import triton

    from mirasdsl.kernels import tuning
    from mirasdsl.kernels.gla import chunk as gla_chunk

    x = make_inputs(1, 37, 1, 24, 80, gate, 1.0, seed=15)
    tuners = (gla_chunk._fwd_o_kernel, gla_chunk._bwd_dv_kernel, gla_chunk._fwd_state_kernel,
              gla_chunk._bwd_state_kernel)
    with tuning.forced({t: triton.Config({"WIDE": 1}, num_warps=8, num_stages=1) for t in tuners}):
        got = run_with_grads(chunk_gla, x, chunk_size=16)
    assert_close(got, run_with_grads(recurrent_gla, x), TOL_TRITON)


@pytest.mark.parametrize("gate", GATE_SHAPES)
def test_triton_cu_seqlens(gate: str) -> None:
    cu = torch.tensor([0, 5, 5, 37, 56])
    x = make_inputs(1, 56, 2, 16, 24, gate, 0.7, n_states=4, seed=12)
    got = run_with_grads(chunk_gla, x, cu_seqlens=cu, chunk_size=16)
    assert_close(got, run_with_grads(recurrent_gla, x, cu_seqlens=cu), TOL_TRITON)


def test_triton_without_states() -> None:
    """No initial state and no final state: the paths without h0 / dht."""
    x = make_inputs(1, 40, 2, 16, 16, "channel", 0.5, seed=13)
    del x["initial_state"]
    outs = []
    for fn, kw in ((recurrent_gla, {}), (chunk_gla, {"chunk_size": 32})):
        o, s = fn(x["q"], x["k"], x["v"], x["g"], **kw)
        assert s is None
        grads = torch.autograd.grad((o * o.detach().sin()).sum(), list(x.values()))
        outs.append([o, *grads])
    for got, ref in zip(*outs):
        assert rel_rms(got, ref) <= TOL_TRITON


@pytest.mark.parametrize("gate", ["scalar", "channel"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_low_precision(dtype: torch.dtype, gate: str) -> None:
    x = make_inputs(1, 37, 2, 32, 16, gate, 0.5, dtype=dtype, seed=14)
    got = run_with_grads(chunk_gla, x, chunk_size=16)
    assert got["o"].dtype == dtype and got["final_state"].dtype == torch.float32
    assert got["dq"].dtype == dtype and got["dg"].dtype == dtype
    assert got["dg"].shape == x["g"].shape
    assert_close(got, run_with_grads(recurrent_gla, as_fp32_leaves(x)), TOL_LOW)


# ------------------------------------------------------------------ GPU, real sizes

def bf16_case(B: int, T: int, H: int, D: int, gate: str, seed: int, device: str = "cuda") -> None:
    """Triton on bf16 inputs (gates of strength 0.05) against the fp32 chunked form on the same
    rounded values, on ``device`` (the CPU: the interpreter with the GPU's rounding): every output
    and gradient finite and within the issue's bf16 tolerance."""
    x = make_inputs(B, T, H, D, D, gate, 0.05, dtype=torch.bfloat16, seed=seed, device=device)
    assert_close(run_with_grads(chunk_gla, x), run_with_grads(chunk_gla_torch, as_fp32_leaves(x)), TOL_LOW)


@pytest.mark.gpu
@pytest.mark.parametrize("gate", ["none", "scalar", "channel"])
def test_triton_gpu_bf16(gate: str) -> None:
    bf16_case(2, 4096, 4, 128, gate, seed=20)


@pytest.mark.gpu
@pytest.mark.gpu_long
@pytest.mark.parametrize("gate", ["none", "scalar", "channel"])
def test_triton_gpu_long_sequence(gate: str) -> None:
    """T = 65536 in bf16, each gate mode (the dense kernels for none / scalar, the sub-chunked ones
    per channel): finite, and within tolerance of the fp32 chunked form."""
    bf16_case(1, 65536, 2, 128, gate, seed=21)


@pytest.mark.slow
@pytest.mark.parametrize("gate", GATE_SHAPES)
def test_triton_long_bf16_under_the_interpreter(gate: str) -> None:
    """The long-sequence check on the CPU: T = 4096 (64 chunks) in bf16, width 16, the GPU's
    bf16 / tf32 rounding emulated, against the fp32 chunked form: the rounding carried from chunk
    to chunk (states kept in bf16 for the backward) stays within the bf16 tolerance."""
    bf16_case(1, 4096, 1, 16, gate, seed=21, device="cpu")


# ------------------------------------------------------------------ compiled for Hopper, no GPU

@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_triton_kernels_compile_for_hopper(dtype: str) -> None:
    """Every launch of forward and backward (K = V = 128, each gate mode: the dense intra
    kernels for none / scalar, the sub-chunked ones per channel) lowers to sm_90 machine code
    and fits an H100's shared memory, every autotune candidate: what the interpreter skips."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "mirasdsl.kernels.gla.compile_check", "--dtype", dtype]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "HAZARD" not in run.stdout, [line for line in run.stdout.splitlines() if "HAZARD" in line]
    seen = {(line.split()[0], line.split()[4]) for line in run.stdout.splitlines() if "shared" in line}
    assert {("gate=none", "_intra_dense_kernel"), ("gate=none", "_bwd_inter_kernel"),
            ("gate=channel", "_intra_kernel"), ("gate=channel", "_bwd_intra_kernel"),
            ("gate=scalar", "_bwd_inter_kernel")} <= seen
