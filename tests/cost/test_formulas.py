"""Cost numbers of three specs against formulas worked out by hand here."""
from __future__ import annotations

import pytest

from mirasdsl.cost import Settings, estimate
from mirasdsl.spec import spec_from_data


def spec(model: dict, mixers: dict, layout: dict | None = None):
    data = {"miras": 1, "name": "t", "model": model, "mixers": mixers}
    if layout:
        data["layout"] = layout
    return spec_from_data(data)


def test_transformer_by_hand():
    s = spec({"vocab_size": 100, "d_model": 64, "n_layers": 2, "heads": 4,
              "channel_mixer": {"kind": "swiglu", "hidden": 128}}, {"attn": {"preset": "transformer"}})
    r = estimate(s, Settings(context=16, batch=1, seq_len=16, dtype="bf16"))
    # embed 100·64 + 2 × (norms 2·64 + qkvo 4·64·64 + swiglu 3·64·128) + final norm 64 + head 100·64
    assert r.total.params == 6400 + 2 * (128 + 16384 + 24576) + 64 + 6400 == 95040
    # per layer: projections 2·16384, scores+values 2·H·(P+V)·(T+1)/2 = 2·4·32·8.5, swiglu 2·24576
    per_layer = 32768 + 2 * 4 * 32 * 8.5 + 49152
    assert r.total.fwd_flops == pytest.approx(2 * per_layer + 2 * 6400)
    assert r.total.train_flops == pytest.approx(3 * r.total.fwd_flops)
    # KV: layers × heads × (P + V) × 2 bytes × 16 tokens
    assert r.total.kv_bytes == 2 * 4 * 32 * 2 * 16 == 8192
    assert r.total.state_bytes == 0


def test_gated_deltanet_layer_by_hand():
    s = spec({"vocab_size": 50, "d_model": 32, "n_layers": 1, "heads": 2, "channel_mixer": "none"},
             {"gdn": {"memory": "matrix", "bias": "l2", "retention": {"local": "gated"}, "update": "gd",
                      "step": "data_dependent",
                      "features": {"short_conv": 4, "output_gate": "swish", "output_norm": "rmsnorm",
                                   "qk_norm": "l2"}}})
    r = estimate(s, Settings(context=64, batch=1, seq_len=64))
    mixer = (4 * 32 * 32  # q k v o
             + 32 * 32  # output gate
             + (2 * 16 + 2 * (16 + 16)) * 4  # depthwise conv on q, k, v channels
             + (32 * 2 + 2)  # step β: Linear(d, H)
             + (32 * 2 + 2) + 2  # decay: Linear(d, H) + A_log
             + 16)  # output RMSNorm weight
    assert mixer == 5654
    assert r.total.params == 1600 + 32 + mixer + 32 + 1600
    # state: H·K·V fp32 + conv cache (kernel − 1) × channels fp32
    assert r.total.state_bytes == 4 * 2 * 16 * 16 + 4 * 96 * 3 == 3200
    core = 2 * 2 * (3 * 64 * 16 + 2 * 64 * 16 + 3 * 16 * 16)  # chunk 64, WY form (the solve is no matmul)
    proj = 2 * (4 * 1024 + 1024) + 2 * 96 * 4 + 2 * (2 * 32 * 2)
    assert r.total.fwd_flops == pytest.approx(proj + core + 2 * 1600)


def test_titans_like_deep_memory_by_hand():
    s = spec({"vocab_size": 10, "d_model": 16, "n_layers": 1, "heads": 2, "norm": "layernorm",
              "tie_embeddings": True, "channel_mixer": {"kind": "mlp", "hidden": 32}},
             {"mem": {"memory": {"mlp": {"depth": 2, "expansion": 2.0}}, "bias": "l2",
                      "retention": {"local": "gated", "global": "l2"},
                      "update": {"gd_momentum": {"chunk": 4}}, "step": "data_dependent"}})
    r = estimate(s, Settings(context=32))
    mixer = 4 * 16 * 16 + 4 * (16 * 2 + 2) + 2 + 2 * (8 * 16 + 16 * 8)  # proj, 4 scalar gates, A_log, W0
    assert mixer == 1674
    assert r.total.params == 160 + 3 * 32 + mixer + 2 * 16 * 32  # tied head adds nothing
    # current weights + momentum + the chunk's starting weights (chunk-wise decoding), fp32
    assert r.total.state_bytes == 4 * 2 * (8 * 16 + 16 * 8) * 3
    assert r.total.kv_bytes == 0


def test_sliding_window_kv_is_bounded_and_hybrid_cache_affine():
    model = {"vocab_size": 10, "d_model": 32, "n_layers": 4, "heads": 2}
    s = spec(model, {"swa": {"preset": "swa", "memory": {"softmax": {"window": 8}}}, "lin": {"preset": "gla"}},
             {"ratio": {"lin": 1, "swa": 1}})
    small, big = (estimate(s, Settings(context=c)).total for c in (64, 4096))
    assert small.kv_bytes == big.kv_bytes == 2 * 2 * 32 * 2 * 8  # 2 layers, window 8
    h = spec(model, {"attn": {"preset": "transformer"}, "lin": {"preset": "gla"}}, {"ratio": {"lin": 3, "attn": 1}})
    c1, c2, c3 = (estimate(h, Settings(context=c)).total.cache_bytes() for c in (100, 200, 300))
    assert c2 - c1 == c3 - c2 > 0  # constant state + linear KV
