"""Sampling the space gives valid, priced specs; whole sub-tuples and layer counts apply as written."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from mirasdsl.errors import SpecError, UserError
from mirasdsl.search import budget as bud
from mirasdsl.search.space import label
from mirasdsl.search.spec import load_search_spec
from mirasdsl.spec.axes import MlpMemory
from test_search_helpers import write_search

SPACE = {
    "layout.count.attn": {"int": [0, 2]},
    "mixers.lin.memory": ["matrix", {"mlp": {"depth": 2, "expansion": 2}}],
    "mixers.lin.retention.local": ["none", "gated"],
    "model.d_model": [16, 32],
    "model.channel_mixer.hidden": {"int": [16, 64], "step": 16},
    "mixers.attn.memory.window": {"int": [4, 16], "log": True},
}


def test_random_points_make_valid_priced_specs(tmp_path: Path) -> None:
    search = load_search_spec(write_search(tmp_path, space=SPACE))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen_counts, seen_memory = set(), set()
    for _ in range(25):
        trial = study.ask()
        point = search.space.suggest(trial)
        cand = bud.make_candidate(search, point)
        assert cand.spec.model.vocab_size == 16  # from the task, not the base's 64
        assert cand.layers.count("attn") == point["layout.count.attn"]
        assert cand.spec.model.d_model == point["model.d_model"]
        mem = cand.spec.mixers["lin"].memory
        assert (mem.kind == "mlp") == isinstance(point["mixers.lin.memory"], dict)
        if isinstance(mem, MlpMemory):
            assert mem.depth == 2 and mem.expansion == 2
        assert cand.spec.mixers["attn"].memory.window == point["mixers.attn.memory.window"]
        assert cand.metrics["params"] > 0 and cand.metrics["train_flops_per_token"] > 0
        seen_counts.add(len([x for x in cand.layers if x == "attn"]))
        seen_memory.add(mem.kind)
        study.tell(trial, 0.0)
    assert seen_counts == {0, 1, 2} and seen_memory == {"matrix", "mlp"}
    # the stored label of a sub-tree choice reads like YAML and maps back to the value
    assert label({"mlp": {"depth": 2, "expansion": 2}}) == "{mlp: {depth: 2, expansion: 2}}"
    assert search.space.from_stored({"mixers.lin.memory": "{mlp: {depth: 2, expansion: 2}}"}) == {
        "mixers.lin.memory": {"mlp": {"depth": 2, "expansion": 2}}}


def test_count_covers_none_to_all(tmp_path: Path) -> None:
    search = load_search_spec(write_search(tmp_path))
    assert bud.make_candidate(search, {"layout.count.attn": 0, "mixers.lin.bias": "dot"}).layers == ("lin", "lin")
    assert bud.make_candidate(search, {"layout.count.attn": 2, "mixers.lin.bias": "dot"}).layers == ("attn", "attn")


def test_invalid_point_is_a_spec_error_not_a_crash(tmp_path: Path) -> None:
    search = load_search_spec(write_search(tmp_path, space={"mixers.lin.memory": ["matrix", "softmax"]}))
    with pytest.raises(SpecError) as info:
        bud.make_candidate(search, {"mixers.lin.memory": "softmax"})
    assert "mixers.lin" in bud.spec_error_text(info.value)


def test_grid_lists_every_value(tmp_path: Path) -> None:
    search = load_search_spec(write_search(tmp_path, sampler="grid"))
    assert search.space.grid() == {"layout.count.attn": [0, 1, 2], "mixers.lin.bias": ["dot", "l2"]}
    with pytest.raises(SpecError) as info:
        load_search_spec(write_search(tmp_path, sampler="grid", space={"model.heads": {"float": [1, 2]}}))
    assert "grid sampler needs a finite set" in info.value.render()


def test_space_that_never_fits_is_refused_before_training(tmp_path: Path) -> None:
    search = load_search_spec(write_search(tmp_path, budget={"params": 10}))
    with pytest.raises(UserError) as info:
        bud.check_space(search)
    text = info.value.render()
    assert "no point of the space fits the budget" in text and "params: the smallest value" in text
    ok = bud.check_space(load_search_spec(write_search(tmp_path)))
    assert ok["feasible"] == ok["valid"] == ok["sampled"] == 4 + 64  # 2 × 2 corners + 64 random points


def test_layout_form_in_the_space_replaces_the_base_form(tmp_path: Path) -> None:
    search = load_search_spec(write_search(tmp_path, space={"layout.indices.attn": [[0], [1]],
                                                            "layout.pattern": [["lin", "attn"]]}))
    with pytest.raises(SpecError, match="invalid spec"):  # two forms at once: still refused
        bud.make_candidate(search, {"layout.indices.attn": [0], "layout.pattern": ["lin", "attn"]})
    search = load_search_spec(write_search(tmp_path, space={"layout.indices.attn": [[0], [1]]}))
    assert bud.make_candidate(search, {"layout.indices.attn": [0]}).layers == ("attn", "lin")
    assert bud.make_candidate(search, {"layout.indices.attn": [1]}).layers == ("lin", "attn")
