"""Softmax attention: the reference against a token loop, the fast paths against the reference
(forward and every input gradient), KV-cache decoding against the full forward, RoPE and ALiBi."""
from __future__ import annotations

import math

import pytest
import torch

from mirasdsl.kernels.attention import (KVCache, alibi_slopes, apply_rope, attend_step,
                                        attention, naive_attention, resolve_backend,
                                        rope_frequencies)

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

TOL = 1e-5  # fp32 relative RMS error, forward and gradients


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def make_qkv(B, T, H, Hkv, D, S=None, dtype=torch.float32, device="cpu", seed=0):
    """Random q, k, v (leaves with gradients); S keys (default T)."""
    g = torch.Generator().manual_seed(seed)
    S = T if S is None else S
    q = torch.randn(B, T, H, D, generator=g, dtype=dtype)
    k = torch.randn(B, S, Hkv, D, generator=g, dtype=dtype)
    v = torch.randn(B, S, Hkv, D, generator=g, dtype=dtype)
    return [x.to(device).requires_grad_(True) for x in (q, k, v)]


def loop_attention(q, k, v, causal, window, slopes, scale=None):
    """Independent reference: one query, one head at a time, float64."""
    B, T, H, D = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    o = torch.zeros(B, T, H, v.shape[-1], dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            n = h // (H // Hkv)
            for i in range(T):
                t = i + S - T
                keys = [s for s in range(S) if (not causal or s <= t)
                        and (window is None or abs(t - s) < window)]
                logit = torch.stack([q[b, i, h].double() @ k[b, s, n].double() * scale
                                     - (0.0 if slopes is None else slopes[h].item() * abs(t - s))
                                     for s in keys])
                p = torch.softmax(logit, 0)
                o[b, i, h] = sum(p[j] * v[b, s, n].double() for j, s in enumerate(keys))
    return o


CASES = {  # name: (H, H_kv, causal, window, alibi, extra keys S - T)
    "causal": (4, 4, True, None, False, 0),
    "window": (4, 4, True, 9, False, 0),
    "alibi": (4, 4, True, None, True, 0),
    "window_alibi_gqa": (4, 2, True, 5, True, 0),
    "gqa": (6, 2, True, None, False, 0),
    "noncausal_window_alibi": (3, 1, False, 4, True, 0),
    "kv_longer": (4, 2, True, 6, True, 7),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_naive_matches_token_loop(name):
    H, Hkv, causal, window, alibi, extra = CASES[name]
    q, k, v = make_qkv(1, 11, H, Hkv, 6, S=11 + extra, dtype=torch.float64)
    slopes = alibi_slopes(H).double() if alibi else None
    o = naive_attention(q, k, v, causal, window, slopes, scale=0.3)
    ref = loop_attention(q, k, v, causal, window, slopes, scale=0.3)
    assert rel_rms(o, ref) < 1e-12


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
@pytest.mark.parametrize("T", [37, 100])
@pytest.mark.parametrize("name", sorted(CASES))
def test_fast_path_matches_reference(name, T, backend):
    H, Hkv, causal, window, alibi, extra = CASES[name]
    if window is not None:
        window = window + T // 10  # a window shorter than T, odd relative to the block size
    q, k, v = make_qkv(2, T, H, Hkv, 60, S=T + extra, seed=T)
    slopes = alibi_slopes(H) if alibi else None
    ref = naive_attention(q, k, v, causal, window, slopes)
    if backend == "flex":  # flex has no backward on the CPU: gradients are checked on a GPU
        o = attention(q.detach(), k.detach(), v.detach(), causal, window, slopes, backend=backend)
        assert rel_rms(o, ref) <= TOL
        return
    o = attention(q, k, v, causal, window, slopes, backend=backend)
    do = torch.randn_like(o)
    grads = torch.autograd.grad(o, (q, k, v), do)
    ref_grads = torch.autograd.grad(ref, (q, k, v), do)
    assert o.shape == ref.shape == (2, T, H, 60)
    assert rel_rms(o, ref) <= TOL
    for g, rg, label in zip(grads, ref_grads, "qkv"):
        assert rel_rms(g, rg) <= TOL, f"d{label}"


def test_window_changes_the_output():
    """A window that cuts keys off, and ALiBi, must change the result (the tests can fail)."""
    q, k, v = make_qkv(1, 40, 2, 2, 8)
    full = naive_attention(q, k, v)
    assert rel_rms(naive_attention(q, k, v, window=5), full) > 1e-2
    assert rel_rms(naive_attention(q, k, v, alibi_slopes=alibi_slopes(2)), full) > 1e-2
    # a window as long as the sequence is no window at all
    assert rel_rms(naive_attention(q, k, v, window=40), full) < 1e-7


def test_low_precision_inputs_keep_dtype():
    q, k, v = (x.detach().bfloat16() for x in make_qkv(1, 33, 4, 2, 16))
    ref = naive_attention(q.float(), k.float(), v.float(), window=8, alibi_slopes=alibi_slopes(4))
    for backend in ("sdpa", "flex", "naive"):
        o = attention(q, k, v, window=8, alibi_slopes=alibi_slopes(4), backend=backend)
        assert o.dtype == torch.bfloat16
        assert rel_rms(o, ref) < 1e-2


DECODE = {  # name: (H, H_kv, window, alibi, capacity or None for the whole length)
    "full": (4, 4, None, False, None),
    "full_alibi_gqa": (4, 2, None, True, None),
    "ring_window": (4, 4, 6, False, 6),
    "ring_window_alibi_gqa": (6, 3, 5, True, 5),
    "ring_larger_than_window": (2, 1, 4, True, 7),
}


@pytest.mark.parametrize("name", sorted(DECODE))
def test_ring_cache_decode_equals_full_forward(name):
    H, Hkv, window, alibi, capacity = DECODE[name]
    T = 23
    q, k, v = (x.detach() for x in make_qkv(2, T, H, Hkv, 12, seed=3))
    slopes = alibi_slopes(H) if alibi else None
    full = attention(q, k, v, window=window, alibi_slopes=slopes)  # [B, T, H, D]
    cache = KVCache.empty(2, capacity or T, Hkv, 12)
    for t in range(T):
        cache.append(k[:, t:t + 1], v[:, t:t + 1])
        o_t = cache.attend(q[:, t:t + 1], window=window, alibi_slopes=slopes)
        assert rel_rms(o_t, full[:, t:t + 1]) <= TOL, f"position {t}"


@pytest.mark.parametrize("window", [None, 5])
def test_contiguous_cache_decode_equals_full_forward(window):
    """A truncated cache (last `window` tokens) and a whole cache with a window both agree."""
    T, H, Hkv = 19, 4, 2
    q, k, v = (x.detach() for x in make_qkv(1, T, H, Hkv, 10, seed=5))
    slopes = alibi_slopes(H)
    full = naive_attention(q, k, v, window=window, alibi_slopes=slopes)
    for t in range(T):
        start = 0 if window is None else max(0, t + 1 - window)
        for lo in {start, 0}:
            o_t = attend_step(q[:, t:t + 1], k[:, lo:t + 1], v[:, lo:t + 1], window, slopes)
            assert rel_rms(o_t, full[:, t:t + 1]) <= TOL, f"position {t}, cache from {lo}"


def test_ring_cache_too_small_is_refused():
    cache = KVCache.empty(1, 3, 1, 4)
    x = torch.randn(1, 1, 1, 4)
    for _ in range(4):
        cache.append(x, x)
    with pytest.raises(ValueError, match="capacity"):
        cache.attend(x)  # full attention over 4 tokens with 3 slots
    with pytest.raises(ValueError, match="capacity"):
        cache.attend(x, window=4)
    assert cache.attend(x, window=3).shape == (1, 1, 1, 4)


def test_rope_relative_position_invariance():
    """rope(q, t) . rope(k, s) depends only on t - s."""
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 1, 3, 16, generator=g, dtype=torch.float64)
    k = torch.randn(1, 1, 3, 16, generator=g, dtype=torch.float64)

    def score(t: int, s: int) -> torch.Tensor:
        qr = apply_rope(q, torch.tensor([t]))
        kr = apply_rope(k, torch.tensor([s]))
        return (qr * kr).sum(-1)  # [1, 1, 3]

    for t, s, shift in [(5, 2, 11), (0, 0, 1000), (3, 9, 40), (100, 1, 7)]:
        torch.testing.assert_close(score(t, s), score(t + shift, s + shift), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(score(5, 2), score(5, 3), atol=1e-3)


def test_rope_matches_complex_rotation_and_keeps_norms():
    B, T, H, D = 2, 13, 3, 8
    x = torch.randn(B, T, H, D, dtype=torch.float64)
    pos = torch.randint(0, 500, (B, T))
    out = apply_rope(x, pos, base=500.0)
    theta = 500.0 ** (-torch.arange(D // 2, dtype=torch.float64) * 2 / D)  # [D/2]
    z = torch.complex(x[..., : D // 2], x[..., D // 2:])  # [B, T, H, D/2]
    rot = z * torch.polar(torch.ones_like(theta), pos[..., None, None].double() * theta)
    expect = torch.cat([rot.real, rot.imag], dim=-1)
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(apply_rope(x)[:, 0], x[:, 0])  # position 0 is the identity
    # [T] positions broadcast like [B, T] ones
    per_batch = torch.arange(T)[None].expand(B, T)
    torch.testing.assert_close(apply_rope(x, torch.arange(T)), apply_rope(x, per_batch))


def test_rope_frequencies_shapes_and_values():
    cos, sin = rope_frequencies(6, 4, base=100.0)
    assert cos.shape == sin.shape == (4, 3)
    angles = torch.tensor([[p * 100.0 ** (-2 * i / 6) for i in range(3)] for p in range(4)])
    torch.testing.assert_close(cos, angles.cos())
    torch.testing.assert_close(sin, angles.sin())
    with pytest.raises(ValueError):
        rope_frequencies(5, 4)


def test_alibi_slopes_standard_values():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -i for i in range(1, 9)]))
    expect12 = [2.0 ** -i for i in range(1, 9)] + [2.0 ** (-(2 * j - 1) / 2) for j in range(1, 5)]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(expect12))
    torch.testing.assert_close(alibi_slopes(1), torch.tensor([2.0 ** -8]))
    assert alibi_slopes(5).shape == (5,)
    assert math.isclose(alibi_slopes(16)[0].item(), 2 ** -0.5, rel_tol=1e-6)


def test_backend_choice_and_errors(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_backend(None, cpu, special=True) == "sdpa"
    assert resolve_backend("triton", cpu, special=False) == "sdpa"
    assert resolve_backend("flex", cpu, special=False) == "flex"
    monkeypatch.setenv("MIRAS_KERNELS", "naive")
    assert resolve_backend(None, cpu, special=False) == "naive"
    assert resolve_backend("sdpa", cpu, special=False) == "sdpa"
    q, k, v = make_qkv(1, 5, 3, 2, 4)
    with pytest.raises(ValueError, match="multiple"):
        attention(q, k, v)
    q, k, v = make_qkv(1, 5, 2, 2, 4)
    with pytest.raises(ValueError, match="backend"):
        attention(q, k, v, backend="cuda")
    with pytest.raises(ValueError, match="window"):
        attention(q, k, v, window=0)
    with pytest.raises(ValueError, match="alibi"):
        attention(q, k, v, alibi_slopes=torch.ones(3))


# ---------------------------------------------------------------- GPU: compiled flex, bf16 SDPA


@pytest.mark.gpu
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("name", ["window", "alibi", "window_alibi_gqa", "noncausal_window_alibi"])
def test_gpu_flex_matches_reference(name, D):
    H, Hkv, causal, window, alibi, extra = CASES[name]
    T = 1000
    window = None if window is None else 129
    q, k, v = make_qkv(2, T, H, Hkv, D, device="cuda", seed=7)
    slopes = alibi_slopes(H, device="cuda") if alibi else None
    assert resolve_backend(None, q.device, special=True) == "flex"
    assert resolve_backend(None, q.device, special=True, same_length=False) == "sdpa"
    o = attention(q, k, v, causal, window, slopes)  # compiled flex
    do = torch.randn_like(o)
    grads = torch.autograd.grad(o, (q, k, v), do)
    ref = naive_attention(q, k, v, causal, window, slopes)
    ref_grads = torch.autograd.grad(ref, (q, k, v), do)
    assert rel_rms(o, ref) <= 1e-3  # TF32-free fp32 flex is close; the bound leaves room
    for g, rg in zip(grads, ref_grads):
        assert rel_rms(g, rg) <= 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("special", [False, True])
def test_gpu_bf16_matches_reference(special):
    q, k, v = (x.detach().bfloat16().requires_grad_(True)
               for x in make_qkv(2, 777, 8, 2, 128, device="cuda", seed=9))
    kw = dict(window=200, alibi_slopes=alibi_slopes(8, device="cuda")) if special else {}
    o = attention(q, k, v, **kw)
    do = torch.randn_like(o)
    grads = torch.autograd.grad(o, (q, k, v), do)
    ref = naive_attention(q, k, v, **kw)
    ref_grads = torch.autograd.grad(ref, (q, k, v), do)
    assert o.dtype == torch.bfloat16
    assert rel_rms(o, ref) <= 2e-2
    for g, rg in zip(grads, ref_grads):
        assert rel_rms(g, rg) <= 2e-2
