"""Deep memory kernels: chunked PyTorch and Triton forms against the token recurrence.

Every comparison covers the output, the final state and the gradients of every input (q, k, v,
eta, the per-token tensors g / mu / lam / delta, the initial weights and, where given, the
initial state), in float32, relative RMS error <= 1e-5.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor

from mirasdsl.kernels.deep_memory import (
    DeepMemoryConfig, DeepMemoryState, chunk_deep_memory, deep_memory, recurrent_deep_memory,
)
from mirasdsl.kernels.deep_memory.chunk import readout_triton, triton_deep_memory
from mirasdsl.kernels.deep_memory.chunk_torch import readout_torch
from mirasdsl.kernels.dispatch import BackendError

TOL = 1e-5


def rel_rms(a: Tensor, b: Tensor) -> float:
    """RMS of the difference over the RMS of the reference."""
    return ((a - b).float().pow(2).mean().sqrt() / (b.float().pow(2).mean().sqrt() + 1e-30)).item()


def make_inputs(
    cfg: DeepMemoryConfig, T: int, B: int = 2, H: int = 2, K: int = 12, V: int = 12,
    hidden: int = 20, seed: int = 0, with_state: bool = False, eta_hi: float = 0.25, g_hi: float = 0.15,
) -> tuple[tuple, dict]:
    """Random inputs for ``cfg`` (all leaves require grad): positional args and keyword args."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen)

    def uni(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(B, T, H, generator=gen)

    dims = [K] + [hidden] * (cfg.depth - 1) + [V]
    ws = tuple(rnd(H, dims[i], dims[i + 1]) / dims[i] ** 0.5 for i in range(cfg.depth))
    args = (rnd(B, T, H, K), rnd(B, T, H, K) / K**0.5, rnd(B, T, H, V), uni(0.02, eta_hi), ws)
    kw: dict = {"g": -uni(0.0, g_hi)}
    if cfg.momentum:
        kw["mu"] = uni(0.3, 0.9)
    if cfg.retention_global == "l2":
        kw["lam"] = uni(0.0, 0.1)
    if cfg.bias == "huber" and cfg.huber_delta is None:
        kw["delta"] = uni(0.3, 1.5)
    if with_state:
        sw = tuple(w.unsqueeze(0).repeat(B, 1, 1, 1) + 0.1 * rnd(B, *w.shape) for w in ws)
        sz = tuple(0.1 * rnd(B, *w.shape) for w in ws) if cfg.momentum else None
        kw["initial_state"] = DeepMemoryState(sw, sz)
    for t in list(args[:4]) + list(ws) + _state_leaves(kw) + [x for x in kw.values() if isinstance(x, Tensor)]:
        t.requires_grad_(True)
    return args, kw


def _state_leaves(kw: dict) -> list[Tensor]:
    st = kw.get("initial_state")
    if st is None:
        return []
    return list(st.weights) + list(st.momentum or ())


def leaves(args: tuple, kw: dict) -> list[Tensor]:
    """Every differentiable input, in a fixed order (an initial state replaces the init weights)."""
    tensors = [x for x in kw.values() if isinstance(x, Tensor)]
    init = [] if "initial_state" in kw else list(args[4])
    return list(args[:4]) + init + tensors + _state_leaves(kw)


def run(fn, cfg: DeepMemoryConfig, args: tuple, kw: dict) -> tuple[Tensor, tuple, tuple]:
    """Output, final state and the gradients of a random functional of both."""
    o, st = fn(*args, cfg, **kw, output_final_state=True)
    gen = torch.Generator().manual_seed(123)
    loss = (o * torch.randn(o.shape, generator=gen).to(o)).sum()
    for w in st.weights + (st.momentum or ()):
        loss = loss + (w * torch.randn(w.shape, generator=gen).to(w)).sum()
    grads = torch.autograd.grad(loss, leaves(args, kw), allow_unused=True)
    return o, st.weights + (st.momentum or ()), grads


def assert_close(got: tuple, ref: tuple, tol: float = TOL) -> None:
    o, st, grads = got
    o_r, st_r, grads_r = ref
    assert torch.isfinite(o).all()
    assert rel_rms(o, o_r) <= tol, f"output {rel_rms(o, o_r):.2e}"
    for i, (a, b) in enumerate(zip(st, st_r)):
        assert rel_rms(a, b) <= tol, f"final state {i}: {rel_rms(a, b):.2e}"
    for i, (a, b) in enumerate(zip(grads, grads_r)):
        assert a is not None and b is not None, f"gradient {i} missing"
        assert rel_rms(a, b) <= tol, f"gradient {i}: {rel_rms(a, b):.2e}"


C = DeepMemoryConfig
CALM = {"g_hi": 0.0, "eta_hi": 0.1}  # LayerNorm / lq: no decay (weights stay O(1), LN stays tame)
CASES = [
    # (config, T, K, with initial state, input ranges): each bias, each retention, gd and
    # momentum, depths 1-3; the ranges keep the fp32 recurrence itself accurate to ~1e-6
    (C(depth=1, bias="l2", chunk_size=4), 63, 12, False, {}),
    (C(depth=2, bias="l2", chunk_size=16), 100, 20, True, {}),
    (C(depth=2, bias="dot", momentum=True, chunk_size=4), 63, 12, False, {}),
    (C(depth=1, bias="dot", retention_global="l2", chunk_size=16), 100, 12, False, {}),
    (C(depth=2, bias="lp", p=3.0, chunk_size=4), 63, 12, False, {}),
    (C(depth=1, bias="lp", p=1.5, momentum=True, chunk_size=16), 100, 20, False, {"eta_hi": 0.05}),
    (C(depth=2, bias="huber", chunk_size=16, retention_global="l2"), 63, 20, False, {}),
    (C(depth=2, bias="huber", huber_delta=0.7, momentum=True, chunk_size=4), 100, 12, True, {}),
    (C(depth=2, bias="robust", robust_radius=0.5, chunk_size=4), 63, 12, False, {}),
    (C(depth=1, bias="robust", robust_radius=0.2, momentum=True, retention_global="l2", chunk_size=16), 63, 12, False, {}),
    (C(depth=2, bias="l2", momentum=True, retention_global="l2", chunk_size=16), 100, 20, True, {}),
    (C(depth=2, bias="l2", norm=True, residual=True, chunk_size=4), 63, 12, False, CALM),
    (C(depth=3, bias="l2", activation="silu", norm=True, momentum=True, chunk_size=16), 63, 12, False, {"g_hi": 0.0, "eta_hi": 0.05}),
    (C(depth=2, bias="dot", activation="relu", residual=True, chunk_size=4), 63, 12, False, {}),
    (C(depth=2, bias="l2", activation="identity", chunk_size=1), 63, 12, False, {}),
    (C(depth=2, bias="huber", momentum=True, retention_global="l2", chunk_size=1), 63, 12, False, {}),
    # nonlinear retentions: materialised chunk path
    (C(depth=2, bias="lp", p=3.0, retention_global="lq", q_norm=4.0, chunk_size=4), 63, 12, False, CALM),
    (C(depth=1, bias="l2", retention_global="lq", q_norm=3.0, momentum=True, chunk_size=16), 100, 12, True, {}),
    (C(depth=2, bias="l2", retention_global="kl", kl_scale=2.0, chunk_size=16), 63, 12, False, {}),
    (C(depth=1, bias="dot", retention_global="kl", kl_scale=1.0, momentum=True, chunk_size=4), 63, 20, False, {}),
    (C(depth=2, bias="robust", robust_radius=0.3, retention_global="elastic_net", l1=0.002, chunk_size=4), 63, 12, False, {}),
    (C(depth=1, bias="l2", retention_global="elastic_net", l1=0.05, momentum=True, chunk_size=16), 100, 12, False, {}),
    (C(depth=2, bias="huber", retention_global="kl", kl_scale=3.0, chunk_size=1), 63, 12, False, {}),
]
IDS = [f"case{i}-{c.bias}-{c.retention_global}-d{c.depth}-C{c.chunk_size}{'-mom' if c.momentum else ''}"
       for i, (c, *_rest) in enumerate(CASES)]


@pytest.mark.parametrize("cfg,T,K,with_state,ranges", CASES, ids=IDS)
def test_chunk_torch_matches_naive(cfg: DeepMemoryConfig, T: int, K: int, with_state: bool, ranges: dict) -> None:
    """float32 chunked form against the float32 recurrence, rel RMS <= 1e-5."""
    args, kw = make_inputs(cfg, T, K=K, V=K, with_state=with_state, **ranges)
    assert_close(run(chunk_deep_memory, cfg, args, kw), run(recurrent_deep_memory, cfg, args, kw))


def _to_double(args: tuple, kw: dict) -> tuple[tuple, dict]:
    """Detached float64 copies of the inputs, requiring grad."""
    def d(t: Tensor) -> Tensor:
        return t.detach().double().requires_grad_(True)

    st = kw.get("initial_state")
    kw64 = {n: d(x) for n, x in kw.items() if isinstance(x, Tensor)}
    if st is not None:
        mom = tuple(map(d, st.momentum)) if st.momentum is not None else None
        kw64["initial_state"] = DeepMemoryState(tuple(map(d, st.weights)), mom)
    return tuple(map(d, args[:4])) + (tuple(map(d, args[4])),), kw64


F64 = [5, 11, 12, 16]  # the cases whose fp32 ranges had to be narrowed


@pytest.mark.parametrize("cfg,T,K,with_state,ranges", [CASES[i] for i in F64], ids=[IDS[i] for i in F64])
def test_chunk_torch_matches_naive_float64(cfg: DeepMemoryConfig, T: int, K: int, with_state: bool, ranges: dict) -> None:
    """In float64 the two algorithms agree to 1e-10 on the default (wider) input ranges too:
    the float32 gaps there are rounding amplified by the recurrence, not the algorithm."""
    args, kw = _to_double(*make_inputs(cfg, T, K=K, V=K, with_state=with_state))
    assert_close(run(chunk_deep_memory, cfg, args, kw), run(recurrent_deep_memory, cfg, args, kw), tol=1e-10)


def _delta_rule(q, k, v, eta, w, g):
    """Independent token-exact gated delta rule: depth-1, l2 bias, gd, chunk 1 (closed form)."""
    B, T, H, _ = q.shape
    s = w.unsqueeze(0).repeat(B, 1, 1, 1)  # [B, H, K, V]
    outs = []
    for t in range(T):
        kt, vt, qt = k[:, t], v[:, t], q[:, t]  # [B, H, K]
        r = torch.einsum("bhk,bhkv->bhv", kt, s) - vt  # [B, H, V]
        s = g[:, t].exp()[..., None, None] * s - eta[:, t][..., None, None] * kt[..., None] * r[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", qt, s))
    return torch.stack(outs, 1)


@pytest.mark.parametrize("fn", [recurrent_deep_memory, chunk_deep_memory])
def test_chunk_size_one_is_token_exact(fn) -> None:
    cfg = C(depth=1, bias="l2", chunk_size=1)
    (q, k, v, eta, ws), kw = make_inputs(cfg, 37)
    o, _ = fn(q, k, v, eta, ws, cfg, **kw)
    ref = _delta_rule(q, k, v, eta, ws[0], kw["g"])
    assert rel_rms(o, ref) <= TOL
    go = torch.autograd.grad(o.square().sum(), [q, k, v, eta, ws[0], kw["g"]])
    gr = torch.autograd.grad(ref.square().sum(), [q, k, v, eta, ws[0], kw["g"]])
    for a, b in zip(go, gr):
        assert rel_rms(a, b) <= TOL


def test_chunked_differs_from_token_exact() -> None:
    """Chunk-wise GD is a different model for an MLP memory (the test can tell them apart)."""
    cfg = C(depth=2, chunk_size=8)
    args, kw = make_inputs(cfg, 40)
    o8, _ = chunk_deep_memory(*args, cfg, **kw)
    o1, _ = chunk_deep_memory(*args, dataclasses.replace(cfg, chunk_size=1), **kw)
    assert rel_rms(o8, o1) > 1e-3


def test_state_carries_across_calls() -> None:
    """Two calls split at a chunk boundary equal one call, and gradients reach the state."""
    cfg = C(depth=2, momentum=True, retention_global="l2", chunk_size=4)
    args, kw = make_inputs(cfg, 24)
    o_full, st_full = chunk_deep_memory(*args, cfg, **kw, output_final_state=True)
    first = lambda x: x[:, :12]  # noqa: E731
    second = lambda x: x[:, 12:]  # noqa: E731
    kw1 = {n: first(x) for n, x in kw.items()}
    kw2 = {n: second(x) for n, x in kw.items()}
    o1, st1 = chunk_deep_memory(*map(first, args[:4]), args[4], cfg, **kw1, output_final_state=True)
    o2, st2 = recurrent_deep_memory(*map(second, args[:4]), args[4], cfg, **kw2, initial_state=st1, output_final_state=True)
    assert rel_rms(torch.cat([o1, o2], 1), o_full) <= TOL
    for a, b in zip(st2.weights + st2.momentum, st_full.weights + st_full.momentum):
        assert rel_rms(a, b) <= TOL


def test_dual_form_saves_no_per_token_weights() -> None:
    """The fast path never keeps a [T, d_in, d_out] weight copy for backward."""
    cfg = C(depth=2, momentum=True, chunk_size=16)
    B, T, H, K, hid = 1, 64, 2, 12, 20
    args, kw = make_inputs(cfg, T, B=B, H=H, K=K, V=K, hidden=hid)
    biggest = [0]

    def pack(t: Tensor) -> Tensor:
        biggest[0] = max(biggest[0], t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        o, _ = chunk_deep_memory(*args, cfg, **kw)
    per_token_weights = B * H * T * K * hid  # one layer's weights for every token
    assert biggest[0] <= per_token_weights // 4  # per-chunk W_0 and Z_0: 2 T / C copies
    assert o.shape == (B, T, H, K)


@pytest.mark.parametrize("mom", [True, False])
@pytest.mark.parametrize("shape", [(3, 4, 12, 20), (2, 16, 20, 12), (2, 37, 12, 33), (2, 16, 80, 12)])
def test_use_tritonout_matches_torch(shape: tuple[int, ...], mom: bool) -> None:
    """The fused read-out (dense products with W_0 and Z_0 scaled per row, the masked scores)
    against the PyTorch one: output and every input gradient; DK = 80 takes two key blocks."""
    N, Cn, DK, DV = shape
    gen = torch.Generator().manual_seed(1)
    rnd = lambda *s: torch.randn(*s, generator=gen).requires_grad_(True)  # noqa: E731
    ts = [rnd(N, Cn, DK), rnd(N, DK, DV), rnd(N, Cn), rnd(N, DK, DV) if mom else None,
          rnd(N, Cn) if mom else None, rnd(N, Cn, DK), rnd(N, Cn, Cn), rnd(N, Cn, DV)]
    leaves = [t for t in ts if t is not None]
    do = torch.randn(N, Cn, DV, generator=gen)
    o1, o2 = readout_triton(*ts), readout_torch(*ts)
    assert rel_rms(o1, o2) <= TOL
    for a, b in zip(torch.autograd.grad(o1, leaves, do), torch.autograd.grad(o2, leaves, do)):
        assert rel_rms(a, b) <= TOL


TRITON_CASES = [
    (C(depth=2, momentum=True, retention_global="l2", chunk_size=16), 63, True),
    (C(depth=1, bias="huber", chunk_size=4), 30, False),
    (C(depth=2, bias="lp", p=3.0, norm=True, residual=True, chunk_size=16), 40, False),
]
TRITON_RANGES = [{}, {}, CALM]


@pytest.mark.parametrize("case,ranges", list(zip(TRITON_CASES, TRITON_RANGES)), ids=["titans", "yaad1", "lp_ttt"])
def test_triton_matches_naive(case: tuple, ranges: dict) -> None:
    """Triton backend (interpreter on CPU) against the recurrence, forward and all gradients."""
    cfg, T, with_state = case
    args, kw = make_inputs(cfg, T, B=1, with_state=with_state, **ranges)
    assert_close(run(triton_deep_memory, cfg, args, kw), run(recurrent_deep_memory, cfg, args, kw))


def test_dispatch_backends_agree() -> None:
    cfg = C(depth=2, chunk_size=4)
    args, kw = make_inputs(cfg, 13, B=1)
    outs = [deep_memory(*args, cfg, **kw, backend=b)[0] for b in ("naive", "chunk", "triton")]
    assert rel_rms(outs[1], outs[0]) <= TOL and rel_rms(outs[2], outs[0]) <= TOL
    with pytest.raises(BackendError):
        deep_memory(*args, cfg, **kw, backend="cuda")


SHORT = [
    (C(depth=2, momentum=True, chunk_size=16), 5),
    (C(depth=1, bias="huber", huber_delta=0.5, chunk_size=16), 16),
    (C(depth=2, retention_global="kl", kl_scale=1.0, chunk_size=16), 7),
]


@pytest.mark.parametrize("cfg,T", SHORT, ids=["T<C", "T=C", "kl-T<C"])
@pytest.mark.parametrize("fn", [chunk_deep_memory, triton_deep_memory], ids=["chunk", "triton"])
def test_short_sequences_without_gate(fn, cfg: DeepMemoryConfig, T: int) -> None:
    """One (partial) chunk, g=None (no local retention), a single batch element and head."""
    args, kw = make_inputs(cfg, T, B=1, H=1)
    kw.pop("g")
    assert_close(run(fn, cfg, args, kw), run(recurrent_deep_memory, cfg, args, kw))


def test_bf16_inputs_give_bf16_output() -> None:
    """Low-precision inputs: fp32 inside, output in v's dtype, close to the fp32 result."""
    cfg = C(depth=2, momentum=True, chunk_size=8)
    args, kw = make_inputs(cfg, 21)
    ref, _ = chunk_deep_memory(*args, cfg, **kw)
    a16 = tuple(a.detach().bfloat16() for a in args[:4]) + (tuple(w.detach().bfloat16() for w in args[4]),)
    k16 = {n: x.detach().bfloat16() for n, x in kw.items()}
    for fn in (chunk_deep_memory, triton_deep_memory):
        o, _ = fn(*a16, cfg, **k16)
        assert o.dtype == torch.bfloat16
        assert rel_rms(o, ref) <= 3e-2


@pytest.mark.parametrize("kwargs,match", [
    ({"bias": "lp"}, "p >= 1"),
    ({"bias": "l2", "p": 3.0}, "only applies to bias='lp'"),
    ({"retention_global": "lq"}, "q_norm > 1"),
    ({"retention_global": "kl", "kl_scale": 0.0}, "kl_scale > 0"),
    ({"l1": 0.1}, "only applies to retention_global='elastic_net'"),
    ({"depth": 1, "hidden": 8}, "hidden must be None"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"activation": "tanh"}, "allowed: gelu"),
    ({"bias": "robust"}, "robust_radius"),
    ({"bias": "huber", "huber_delta": -1.0}, "huber_delta must be > 0"),
])
def test_config_rejects(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DeepMemoryConfig(**kwargs)


def test_call_rejects_missing_tensors() -> None:
    cfg = C(depth=2, momentum=True)
    args, kw = make_inputs(cfg, 8)
    with pytest.raises(ValueError, match="mu"):
        chunk_deep_memory(*args, cfg, g=kw["g"])
    with pytest.raises(ValueError, match="K == V"):
        r = C(depth=1, residual=True)
        a2, kw2 = make_inputs(r, 8, K=12, V=8)
        chunk_deep_memory(*a2, r, **kw2)


# ------------------------------------------------------------------ GPU, real size
def _titans_inputs(B: int, T: int, H: int, D: int, hidden: int, device: str):
    gen = torch.Generator(device=device).manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, device=device)  # noqa: E731
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(B, T, H, generator=gen, device=device)  # noqa: E731
    ws = (r(H, D, hidden) / D**0.5, r(H, hidden, D) / hidden**0.5)
    q, k, v = r(B, T, H, D) / D**0.5, r(B, T, H, D) / D**0.5, r(B, T, H, D)
    args = (q, k, v, u(0.01, 0.1), ws)
    kw = {"g": -u(0.0, 0.01), "mu": u(0.5, 0.9), "lam": u(0.0, 0.01)}
    for t in [q, k, v, args[3], *ws, *kw.values()]:
        t.requires_grad_(True)
    return args, kw


@pytest.mark.gpu
def test_gpu_triton_matches_chunk_torch_real_size() -> None:
    cfg = C(depth=2, momentum=True, retention_global="l2", chunk_size=64)
    args, kw = _titans_inputs(2, 1024, 8, 128, 256, "cuda")
    o1, _, g1 = run(triton_deep_memory, cfg, args, kw)
    o2, _, g2 = run(chunk_deep_memory, cfg, args, kw)
    assert rel_rms(o1, o2) <= 1e-4
    for a, b in zip(g1, g2):
        assert rel_rms(a, b) <= 1e-4


@pytest.mark.gpu
@pytest.mark.gpu_long
def test_gpu_chunk16_titans_size_fits() -> None:
    """B=4, T=4096, 8 heads of 128, depth-2 MLP, momentum, chunk 16: forward+backward fit."""
    cfg = C(depth=2, momentum=True, retention_global="l2", chunk_size=16)
    args, kw = _titans_inputs(4, 4096, 8, 128, 256, "cuda")
    torch.cuda.reset_peak_memory_stats()
    o, _ = deep_memory(*args, cfg, **kw, backend="triton")
    o.square().mean().backward()
    assert torch.isfinite(args[0].grad).all()
    assert torch.cuda.max_memory_allocated() < 40 * 2**30
