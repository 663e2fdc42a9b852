"""Each preset expands to the tuple MIRAS.md §9 gives it, and overrides merge field by field."""
from __future__ import annotations

import pytest

from mirasdsl.spec import ParallelMixer, spec_from_data
from mirasdsl.spec.families import ATTENTION, DEEP, DELTA, GLA, lower_tuple

BASE = {"miras": 1, "name": "t", "model": {"vocab_size": 32, "d_model": 64, "n_layers": 2, "heads": 2}}

# preset: (memory, bias, local retention, global retention, update, family)
EXPECTED = {
    "transformer": ("softmax", "l2", "none", "none", "exact", ATTENTION),
    "transformer-alibi": ("softmax", "l2", "none", "none", "exact", ATTENTION),
    "swa": ("softmax", "l2", "none", "none", "exact", ATTENTION),
    "linear-attention": ("matrix", "dot", "none", "none", "gd", GLA),
    "lightning": ("matrix", "dot", "constant", "none", "gd", GLA),
    "retnet": ("matrix", "dot", "constant", "none", "gd", GLA),
    "gla": ("matrix", "dot", "gated", "none", "gd", GLA),
    "mamba2": ("matrix", "dot", "gated", "none", "gd", GLA),
    "hedgehog": ("matrix", "dot", "none", "none", "gd", GLA),
    "deltanet": ("matrix", "l2", "none", "none", "gd", DELTA),
    "gated-deltanet": ("matrix", "l2", "gated", "none", "gd", DELTA),
    "kda": ("matrix", "l2", "gated", "none", "gd", DELTA),
    "longhorn": ("matrix", "l2", "none", "none", "implicit", DELTA),
    "ttt-linear": ("mlp", "l2", "none", "none", "gd", DEEP),
    "ttt-mlp": ("mlp", "l2", "none", "none", "gd", DEEP),
    "titans": ("mlp", "l2", "gated", "l2", "gd_momentum", DEEP),
    "titans-pytorch": ("mlp", "l2", "gated", "none", "gd_momentum", DEEP),
    "moneta": ("mlp", "lp", "gated", "lq", "gd", DEEP),
    "yaad": ("mlp", "huber", "gated", "l2", "gd", DEEP),
    "memora": ("mlp", "l2", "gated", "kl", "gd", DEEP),
}


def mixer_of(preset: str, **override):
    spec = spec_from_data({**BASE, "mixers": {"m": {"preset": preset, **override}}})
    return spec.mixers["m"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_tuple(name):
    m = mixer_of(name)
    got = (m.memory.kind, m.bias.kind, m.retention.local.kind, m.retention.global_.kind, m.update.kind,
           lower_tuple(m).family)
    assert got == EXPECTED[name]
    assert m.preset == name


def test_channel_and_head_gates():
    assert mixer_of("gla").retention.local.granularity == "channel"
    assert mixer_of("kda").retention.local.granularity == "channel"
    assert mixer_of("gated-deltanet").retention.local.granularity == "head"
    assert mixer_of("ttt-mlp").update.chunk == 16 and mixer_of("ttt-mlp").memory.depth == 2
    assert mixer_of("swa").memory.window == 512
    assert mixer_of("transformer-alibi").features.position == "alibi"
    assert mixer_of("moneta").bias.p == 3.0 and mixer_of("moneta").retention.global_.q == 4.0


@pytest.mark.parametrize("name", ["based", "titans-mag"])
def test_parallel_presets(name):
    m = mixer_of(name)
    assert isinstance(m, ParallelMixer) and len(m.branches) == 2
    families = {lower_tuple(b).family for b in m.branches.values()}
    assert ATTENTION in families


def test_override_merges_field_by_field():
    m = mixer_of("gated-deltanet", features={"short_conv": 0})
    assert m.features.short_conv == 0
    assert m.features.qk_norm == "l2" and m.features.output_gate == "swish"  # kept from the preset


def test_override_of_a_kind_replaces_its_options():
    m = mixer_of("ttt-mlp", memory={"mlp": {"depth": 3}})
    assert m.memory.depth == 3 and m.memory.norm is True  # same kind: merged
    m = mixer_of("swa", memory="softmax")
    assert m.memory.window == 512  # same kind, no options given: the preset's window stays
    m = mixer_of("deltanet", bias={"kind": "l2"}, retention={"local": "gated"})
    assert m.retention.local.kind == "gated"
