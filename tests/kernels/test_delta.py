"""Gated delta rule: naive (truth) vs chunked PyTorch vs Triton, forward and every gradient."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mirasdsl.kernels.delta import chunk_delta_rule_torch, delta_rule, longhorn_beta, recurrent_delta_rule
from mirasdsl.kernels.dispatch import BackendError

GATES = ("none", "scalar", "channel")
# Triton runs on CUDA where there is one, else on the CPU under TRITON_INTERPRET=1 (conftest.py)
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative RMS error of a against the reference b."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).pow(2).mean() / b.pow(2).mean().clamp_min(1e-30)).sqrt().item()


def make_inputs(
    b: int, t: int, h: int, dk: int, dv: int, gate: str, regime: str = "mixed",
    n_state: int | None = None, seed: int = 0,
) -> dict[str, torch.Tensor | None]:
    """Random inputs as the models use them: L2-normalised keys, beta in (0, 1), log gates.

    regime: 'near0' (alpha in (0.001, 0.05)), 'near1' (alpha in (0.99, 1)) or 'mixed'."""
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    shape = {"none": None, "scalar": (b, t, h), "channel": (b, t, h, dk)}[gate]
    g = None
    if shape is not None:
        u = torch.rand(*shape, generator=gen)
        lo, hi = {"near0": (0.001, 0.05), "near1": (0.99, 1.0), "mixed": (0.3, 1.0)}[regime]
        g = torch.log(lo + (hi - lo) * u)  # [B, T, H(, K)], log alpha <= 0
    return dict(
        q=rnd(b, t, h, dk),
        k=F.normalize(rnd(b, t, h, dk), dim=-1),
        v=rnd(b, t, h, dv),
        beta=0.02 + 0.96 * torch.rand(b, t, h, generator=gen),
        g=g,
        initial_state=rnd(n_state or b, h, dk, dv),
    )


def run_with_grads(fn, inputs: dict, cu_seqlens=None, dtype=torch.float32, device="cpu", **kw):
    """Run fn on ``device``, backprop fixed random cotangents of o and the final state;
    return (o, S, grads). Every input but the float32 initial state is cast to ``dtype``."""
    leaves = {n: x.to(device, dtype).detach().requires_grad_() for n, x in inputs.items() if x is not None}
    if "initial_state" in leaves:
        leaves["initial_state"] = inputs["initial_state"].to(device).detach().requires_grad_()
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.to(device)
    o, s = fn(
        leaves["q"], leaves["k"], leaves["v"], leaves["beta"], leaves.get("g"),
        initial_state=leaves.get("initial_state"), output_final_state=True, cu_seqlens=cu_seqlens, **kw,
    )
    gen = torch.Generator().manual_seed(123)
    do = torch.randn(o.shape, generator=gen).to(device)
    ds = torch.randn(s.shape, generator=gen).to(device)
    loss = (o.float() * do).sum() + (s.float() * ds).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return o, s, dict(zip(leaves, grads))


def assert_close(got, ref, tol: float) -> None:
    """Outputs, final state and every input gradient within relative RMS ``tol``."""
    o, s, gr = got
    o_r, s_r, gr_r = ref
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    errs = {"o": rel_rms(o, o_r), "S": rel_rms(s, s_r)}
    errs.update({f"d{n}": rel_rms(gr[n], gr_r[n]) for n in gr_r})
    assert set(gr) == set(gr_r)
    bad = {n: e for n, e in errs.items() if not e <= tol}
    assert not bad, f"relative RMS errors above {tol}: {bad} (all: {errs})"


# ---------------------------------------------------------------- chunked PyTorch vs naive


@pytest.mark.parametrize("t", [63, 100])
@pytest.mark.parametrize("gate", GATES)
def test_chunk_torch_matches_naive(t: int, gate: str) -> None:
    inputs = make_inputs(2, t, 2, 60, 36, gate)
    ref = run_with_grads(recurrent_delta_rule, inputs)
    assert_close(run_with_grads(chunk_delta_rule_torch, inputs), ref, 1e-5)


@pytest.mark.parametrize("regime", ["near0", "near1"])
@pytest.mark.parametrize("gate", ["scalar", "channel"])
def test_chunk_torch_extreme_gates(gate: str, regime: str) -> None:
    inputs = make_inputs(1, 100, 2, 60, 36, gate, regime, seed=1)
    ref = run_with_grads(recurrent_delta_rule, inputs)
    assert_close(run_with_grads(chunk_delta_rule_torch, inputs, chunk_size=32), ref, 1e-5)


@pytest.mark.parametrize("gate", GATES)
def test_chunk_torch_varlen(gate: str) -> None:
    cu = torch.tensor([0, 17, 17, 81, 100])  # the second sequence is empty
    inputs = make_inputs(1, 100, 2, 60, 36, gate, n_state=4, seed=2)
    ref = run_with_grads(recurrent_delta_rule, inputs, cu_seqlens=cu)
    assert_close(run_with_grads(chunk_delta_rule_torch, inputs, cu_seqlens=cu), ref, 1e-5)


def test_varlen_equals_separate_sequences() -> None:
    """The naive reference restarts the state at each boundary (checked against plain calls)."""
    cu = torch.tensor([0, 5, 12])
    x = make_inputs(1, 12, 1, 8, 4, "scalar", n_state=2, seed=3)
    o, s = recurrent_delta_rule(x["q"], x["k"], x["v"], x["beta"], x["g"], initial_state=x["initial_state"],
                                output_final_state=True, cu_seqlens=cu)
    for i, (a, b) in enumerate([(0, 5), (5, 12)]):
        oi, si = recurrent_delta_rule(x["q"][:, a:b], x["k"][:, a:b], x["v"][:, a:b], x["beta"][:, a:b],
                                      x["g"][:, a:b], initial_state=x["initial_state"][i:i + 1],
                                      output_final_state=True)
        torch.testing.assert_close(o[:, a:b], oi)
        torch.testing.assert_close(s[i:i + 1], si)


def test_naive_single_step_by_hand() -> None:
    """One token from a zero state: S = beta k vᵀ, o = scale beta (q·k) v."""
    q, k, v = torch.randn(1, 1, 1, 3), torch.randn(1, 1, 1, 3), torch.randn(1, 1, 1, 2)
    beta = torch.full((1, 1, 1), 0.5)
    o, s = recurrent_delta_rule(q, k, v, beta, scale=1.0, output_final_state=True)
    torch.testing.assert_close(s[0, 0], 0.5 * k[0, 0, 0][:, None] * v[0, 0, 0][None, :])
    torch.testing.assert_close(o[0, 0, 0], 0.5 * (q * k).sum() * v[0, 0, 0])


def test_longhorn_is_a_delta_rule() -> None:
    """S_t = S_{t-1}(I − ε k kᵀ) + ε v kᵀ with ε = β/(1 + β‖k‖²) (MIRAS.md, V×K convention)."""
    x = make_inputs(1, 9, 1, 5, 3, "none", seed=4)
    k = x["k"] * 1.7  # unnormalised keys make the implicit step differ from beta
    eps = longhorn_beta(x["beta"], k)
    _, s = recurrent_delta_rule(x["q"], k, x["v"], eps, output_final_state=True)
    m = torch.zeros(3, 5)  # [V, K]
    for t in range(9):
        kt, vt, e = k[0, t, 0], x["v"][0, t, 0], eps[0, t, 0]
        m = m @ (torch.eye(5) - e * torch.outer(kt, kt)) + e * torch.outer(vt, kt)
    torch.testing.assert_close(s[0, 0].T, m)


def test_bad_shapes_raise() -> None:
    x = make_inputs(2, 8, 1, 4, 4, "none")
    with pytest.raises(ValueError, match="beta"):
        recurrent_delta_rule(x["q"], x["k"], x["v"], x["beta"][..., None])
    with pytest.raises(ValueError, match="B == 1"):
        chunk_delta_rule_torch(x["q"], x["k"], x["v"], x["beta"], cu_seqlens=torch.tensor([0, 8]))
    with pytest.raises(BackendError):
        delta_rule(x["q"], x["k"], x["v"], x["beta"], backend="cuda")


@pytest.mark.parametrize("backend", ["naive", "chunk", "triton"])
def test_dispatch_backends_agree(backend: str) -> None:
    x = make_inputs(1, 20, 1, 8, 8, "scalar", seed=5)
    ref, _ = recurrent_delta_rule(x["q"], x["k"], x["v"], x["beta"], x["g"])
    if backend == "triton":
        x = {n: t.to(TRITON_DEVICE) for n, t in x.items()}
    o, s = delta_rule(x["q"], x["k"], x["v"], x["beta"], x["g"], backend=backend)
    assert s is None and o.shape == ref.shape
    assert rel_rms(o, ref) < 1e-5


# ---------------------------------------------------------------- Triton (interpreter on CPU)


def triton_fn():
    from mirasdsl.kernels.delta.chunk import chunk_delta_rule

    return chunk_delta_rule


@pytest.mark.slow
@pytest.mark.parametrize("gate", GATES)
def test_triton_fp32_matches_naive(gate: str) -> None:
    inputs = make_inputs(2, 100, 2, 20, 12, gate, seed=6)
    ref = run_with_grads(recurrent_delta_rule, inputs)
    assert_close(run_with_grads(triton_fn(), inputs, device=TRITON_DEVICE), ref, 1e-4)


def test_triton_channel_diagonal_dense_and_exact() -> None:
    """Per-channel gates: sub-chunks whose gates fall by less than ``DENSE_SPAN`` (30 nats) in
    every channel form their diagonal blocks of M, P and their gradients by matmuls (one of them
    near the limit, ~25 nats), one with a stretch of strong decay (~62 nats in every channel)
    column by column, in the same chunk; forward and every gradient in fp32."""
    from mirasdsl.kernels.delta._tl_common import DENSE_SPAN

    inputs = make_inputs(1, 140, 2, 20, 12, "channel", seed=17)  # alpha in (0.3, 1): ~8 nats / 16 rows
    inputs["g"][:, 20:30] = math.log(0.002)  # sub-chunk 1 of chunk 0: ~62 nats
    inputs["g"][:, 66:76, 0] -= 1.0  # sub-chunk 0 of chunk 1, head 0: ~20 nats
    fall = [-inputs["g"][0, i:i + 16].sum(0) for i in (0, 16, 64)]  # [H, K] each
    limit = DENSE_SPAN.value
    assert fall[0].max() < limit < fall[1].min() and 15 < fall[2].max() < limit
    ref = run_with_grads(recurrent_delta_rule, inputs)
    assert_close(run_with_grads(triton_fn(), inputs, device=TRITON_DEVICE), ref, 1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("gate,regime", [("scalar", "near0"), ("channel", "near0"), ("channel", "near1")])
def test_triton_extreme_gates_odd_t(gate: str, regime: str) -> None:
    inputs = make_inputs(1, 71, 1, 20, 12, gate, regime, seed=7)
    ref = run_with_grads(recurrent_delta_rule, inputs)
    assert_close(run_with_grads(triton_fn(), inputs, device=TRITON_DEVICE), ref, 1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("gate", GATES)
def test_triton_varlen(gate: str) -> None:
    cu = torch.tensor([0, 5, 5, 70, 93])  # the second sequence is empty
    inputs = make_inputs(1, 93, 1, 20, 12, gate, n_state=4, seed=8)
    ref = run_with_grads(recurrent_delta_rule, inputs, cu_seqlens=cu)
    assert_close(run_with_grads(triton_fn(), inputs, cu_seqlens=cu, device=TRITON_DEVICE), ref, 1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_half_precision(gate: str, dtype: torch.dtype) -> None:
    """Half inputs, float32 state: compared with the fp32 truth on the same rounded inputs."""
    inputs = make_inputs(1, 77, 2, 20, 12, gate, seed=9)
    rounded = {n: (x.to(dtype).float() if x is not None and n != "initial_state" else x) for n, x in inputs.items()}
    ref = run_with_grads(recurrent_delta_rule, rounded)
    o, s, gr = run_with_grads(triton_fn(), inputs, dtype=dtype, device=TRITON_DEVICE)
    assert o.dtype == dtype and s.dtype == torch.float32 and gr["q"].dtype == dtype
    assert_close((o, s, gr), ref, 5e-3)


def test_triton_bf16_channel_gates_near_zero_partial_chunk() -> None:
    """bf16, per-channel gates near 0 (3-7 nats a token), T = 70: the last chunk's 6 rows fall
    by less than ``DENSE_SPAN`` and take the dense diagonal block, whose j = i terms of M must be
    exact for the gates' gradient to cancel as it should (through the matmul's tf32 factors it
    was 5.14e-3 off here; exact, 3.3e-3)."""
    inputs = make_inputs(1, 70, 2, 32, 32, "channel", "near0", seed=1)
    rounded = {n: (x.bfloat16().float() if x is not None and n != "initial_state" else x) for n, x in inputs.items()}
    ref = run_with_grads(recurrent_delta_rule, rounded)
    got = run_with_grads(triton_fn(), inputs, dtype=torch.bfloat16, device=TRITON_DEVICE)
    assert_close(got, ref, 5e-3)


@pytest.mark.parametrize("t,k,v,regime,seed", [(70, 32, 32, "near1", 2), (70, 32, 32, "near1", 5),
                                                (37, 20, 12, "near0", 2)])
def test_triton_bf16_scalar_gates_near_one_and_zero(t: int, k: int, v: int, regime: str, seed: int) -> None:
    """bf16 with scalar gates near 1 (alpha in (0.99, 1)) or near 0 at small odd shapes: the
    gate's gradient was the closest output to the 5e-3 limit and went over it in these cases
    (5.14e-3, 6.01e-3, 5.33e-3) with S_0 and Ṽ stored in bf16; in float32 ≤ 3.9e-3."""
    inputs = make_inputs(1, t, 2, k, v, "scalar", regime, seed=seed)
    rounded = {n: (x.bfloat16().float() if x is not None and n != "initial_state" else x) for n, x in inputs.items()}
    ref = run_with_grads(recurrent_delta_rule, rounded)
    got = run_with_grads(triton_fn(), inputs, dtype=torch.bfloat16, device=TRITON_DEVICE)
    assert_close(got, ref, 5e-3)


@pytest.mark.slow
def test_triton_without_state_and_short() -> None:
    """No initial state, no final state, a single partial chunk (T = 7)."""
    x = make_inputs(2, 7, 1, 20, 12, "channel", seed=10)
    names = ("q", "k", "v", "beta", "g")
    do = torch.randn(2, 7, 1, 12)
    outs = []
    for fn, dev in ((recurrent_delta_rule, "cpu"), (triton_fn(), TRITON_DEVICE)):
        leaves = [x[n].to(dev).requires_grad_() for n in names]
        o, s = fn(*leaves)
        assert s is None
        outs.append((o, torch.autograd.grad((o * do.to(dev)).sum(), leaves)))
    assert rel_rms(outs[1][0], outs[0][0]) < 1e-4
    for got, ref in zip(outs[1][1], outs[0][1]):
        assert rel_rms(got, ref) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("gate", ["scalar", "channel"])
def test_triton_wide_heads(gate: str) -> None:
    """K = 72 and V = 80: padded key block and two value blocks (per-channel gates: the
    backward's two passes over the key, 64 channels and a partial 8)."""
    inputs = make_inputs(1, 40, 1, 72, 80, gate, seed=13)
    ref = run_with_grads(recurrent_delta_rule, inputs)
    assert_close(run_with_grads(triton_fn(), inputs, device=TRITON_DEVICE), ref, 1e-4)


@pytest.mark.parametrize("regime", ["mixed", "near0"])
def test_triton_channel_diagonal_by_rows(regime: str) -> None:
    """The per-channel intra backward's second form of its diagonal sub-block (DIAG = 1, a loop
    over rows, tuned on the GPU; the interpreter runs the first form) gives the same gradients:
    forced, at odd T and K, gates mixed and near 0."""
    import triton

    from mirasdsl.kernels import tuning
    from mirasdsl.kernels.delta import _tl_bwd

    inputs = make_inputs(1, 70, 2, 20, 12, "channel", regime, seed=19)
    ref = run_with_grads(recurrent_delta_rule, inputs)
    with tuning.forced({_tl_bwd.intra_bwd_channel_kernel: triton.Config({"DIAG": 1}, num_warps=4, num_stages=1)}):
        got = run_with_grads(triton_fn(), inputs, device=TRITON_DEVICE)
    assert_close(got, ref, 1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("bv", [16, 32, 64, 128])
def test_triton_tuned_value_blocks(bv: int) -> None:
    """Each value block the state passes and the output kernel may be tuned to (V = 80: five
    blocks of 16, three of 32, 64 + a masked 16, or one masked 128) gives the same numbers: the
    interpreter runs only the default, so force each."""
    import triton

    from mirasdsl.kernels import tuning
    from mirasdsl.kernels.delta import _tl_bwd, _tl_fwd

    inputs = make_inputs(2, 70, 1, 24, 80, "channel", seed=17)
    ref = run_with_grads(recurrent_delta_rule, inputs)
    tuners = (_tl_fwd.state_fwd_kernel, _tl_bwd.state_bwd_kernel, _tl_fwd.output_kernel)
    with tuning.forced({t: triton.Config({"BV": bv}, num_warps=4, num_stages=1) for t in tuners}):
        got = run_with_grads(triton_fn(), inputs, device=TRITON_DEVICE)
    assert_close(got, ref, 1e-4)


@pytest.mark.slow
def test_kernels_compile_for_h100() -> None:
    """Every launch of forward and backward (K = V = 128, bf16, each gate mode) compiles for
    sm_90 and fits in an H100's shared memory: what the interpreter cannot check."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "mirasdsl.kernels.delta.compile_check", "--dk", "128", "--dv", "128"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "HAZARD" not in done.stdout, [line for line in done.stdout.splitlines() if "HAZARD" in line]
    kernels = {line.split()[4] for line in done.stdout.splitlines() if "shared" in line}
    assert {"intra_channel_kernel", "wy_bwd_kernel", "qk_bwd_kernel", "intra_bwd_channel_kernel", "state_bwd_kernel"} <= kernels
    # registers: the chunk-parallel kernels keep a spill-free candidate (64-bit per-element tile
    # offsets had every candidate of every kernel spill)
    free = {(line.split()[0], line.split()[5]) for line in done.stdout.splitlines()
            if "registers:" in line and "spill-free" in line}
    for gate, names in (("gate=none", ("intra_dense_kernel", "solve_kernel", "output_kernel")),
                        ("gate=scalar", ("intra_dense_kernel", "solve_kernel", "output_kernel")),
                        ("gate=channel", ("intra_channel_kernel", "solve_kernel", "output_kernel",
                                          "intra_bwd_channel_kernel"))):
        assert {(gate, n) for n in names} <= free, sorted(free)
    # the per-chunk backward, split in two: each half spills under 1000 B per thread at best in
    # every gate mode (the single main_bwd_kernel before it: 1048-1240 B; now 40-776 B)
    least = {}
    for line in done.stdout.splitlines():
        m = re.search(r"^(gate=\w+) .*registers: (\w+) .*least (\d+) B/thread", line)
        if m:
            least[m.group(1), m.group(2)] = int(m.group(3))
    for gate in ("gate=none", "gate=scalar", "gate=channel"):
        for name in ("wy_bwd_kernel", "qk_bwd_kernel"):
            assert least.get((gate, name), 0) < 1000, (gate, name, least.get((gate, name)))


# ---------------------------------------------------------------- GPU (real sizes)


def rounded_copy(inputs: dict, dtype: torch.dtype) -> dict:
    """The inputs as the half-precision kernel sees them, back in float32 (state kept)."""
    return {n: (x.to(dtype).float() if x is not None and n != "initial_state" else x) for n, x in inputs.items()}


def device_case(t: int, gate: str, dtype: torch.dtype, b: int = 2, h: int = 4, d: int = 128, cu=None,
             device: str = "cuda") -> None:
    """Triton on CUDA (or the interpreter, ``device="cpu"``) vs the fp32 chunked reference on the
    same device (no TF32) and the same rounded inputs: output, final state and every input
    gradient."""
    n_state = b if cu is None else len(cu) - 1
    inputs = make_inputs(b, t, h, d, d, gate, n_state=n_state, seed=11)
    ref = run_with_grads(chunk_delta_rule_torch, rounded_copy(inputs, dtype), cu_seqlens=cu, device=device)
    got = run_with_grads(triton_fn(), inputs, cu_seqlens=cu, dtype=dtype, device=device)
    assert all(torch.isfinite(gv).all() for gv in got[2].values())
    assert_close(got, ref, 1e-4 if dtype == torch.float32 else 5e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_real_size(gate: str, dtype: torch.dtype) -> None:
    """B=2, T=1000 (partial last chunk), H=4, D=128, compiled for the GPU: a miscompiled
    (gated) backward shows up as a gradient far off the reference."""
    device_case(1000, gate, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("regime", ["near0", "near1"])
def test_gpu_extreme_channel_gates(regime: str) -> None:
    inputs = make_inputs(1, 700, 2, 128, 128, "channel", regime, seed=14)
    ref = run_with_grads(chunk_delta_rule_torch, inputs, device="cuda")
    assert_close(run_with_grads(triton_fn(), inputs, device="cuda"), ref, 1e-4)


@pytest.mark.gpu
@pytest.mark.gpu_long
@pytest.mark.parametrize("gate", GATES)
def test_gpu_long_bf16(gate: str) -> None:
    """T = 65536 in bf16: finite and within tolerance of the fp32 reference."""
    device_case(65536, gate, torch.bfloat16, b=1, h=2, d=64)


@pytest.mark.slow
@pytest.mark.parametrize("gate", GATES)
def test_long_bf16_under_the_interpreter(gate: str) -> None:
    """The long-sequence check on the CPU: T = 4096 (64 chunks) in bf16, width 16, the GPU's
    bf16 / tf32 rounding emulated: the rounding the state passes carry from chunk to chunk stays
    within the bf16 tolerance (the shorter tests span two or three chunks)."""
    device_case(4096, gate, torch.bfloat16, b=1, h=1, d=16, device="cpu")


@pytest.mark.gpu
def test_gpu_varlen_bf16() -> None:
    device_case(4096, "channel", torch.bfloat16, b=1, cu=torch.tensor([0, 300, 2100, 4096]))


def test_scale_default_is_inverse_sqrt_k() -> None:
    x = make_inputs(1, 6, 1, 16, 4, "none")
    o1, _ = chunk_delta_rule_torch(x["q"], x["k"], x["v"], x["beta"])
    o2, _ = chunk_delta_rule_torch(x["q"], x["k"], x["v"], x["beta"], scale=1 / math.sqrt(16))
    torch.testing.assert_close(o1, o2)


def test_dense_batches_build_their_chunk_tables_on_the_device() -> None:
    """A batch without ``cu_seqlens`` gets its chunk tables (delta rule, GLA, deep memory's
    chunk-end rows) from device ops: a tensor made from host data (``lift_fresh``) is, on CUDA,
    a copy that synchronises the stream and stalls each call on the work queued before it. The
    tables equal the ones built from the lengths, as ``cu_seqlens`` would give them."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from mirasdsl.kernels.deep_memory.chunk_torch import chunk_end_table, chunk_ends
    from mirasdsl.kernels.delta.chunk import chunk_table

    class HostData(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.made = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            self.made += func.overloadpacket.__name__ == "lift_fresh"
            return func(*args, **(kwargs or {}))

    co = {"gam": torch.randn(2, 3, 4, 16)}
    with HostData() as mode:
        dense = chunk_table(3, 150, None, torch.device("cpu"))
        rows = chunk_end_table(co, chunk_ends(50, 16, 4))
    assert mode.made == 0
    packed = chunk_table(3, 150, torch.tensor([0, 150, 300, 450]), torch.device("cpu"))
    for a, b in zip(dense, packed):
        assert (a == b).all() if isinstance(a, torch.Tensor) else a == b
    assert torch.equal(rows["gam"], co["gam"][:, :, torch.arange(4), torch.tensor([15, 15, 15, 1])])
