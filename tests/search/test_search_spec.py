"""Search specs are validated like model specs: file:line:column, dotted path, expected, nearest."""
from __future__ import annotations

from pathlib import Path

import pytest

from mirasdsl.errors import SpecError
from mirasdsl.search.spec import load_search_spec, parse_amount
from test_search_helpers import write_search

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
miras-search: 1
base: base.yaml
space:
  layout.count.attn: {int: [0, 2]}
  mixers.lin.memory: [matrix, {mlp: {depth: 2, expansion: 2}}]
  model.d_model: [16, 32]
budget: {params: 2M, cache_bytes: 1MiB, context: 256}
objective:
  task: {mqar: {seq_len: 16, kv_pairs: 2, vocab_size: 16}}
  steps: 4
  directions: {accuracy: maximize, train_flops_per_token: minimize}
trials: 3
"""


def problem(tmp_path: Path, text: str) -> tuple[SpecError, str]:
    path = write_search(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_search_spec(path)
    return info.value, info.value.render()


def test_good_spec_loads(tmp_path: Path) -> None:
    s = load_search_spec(write_search(tmp_path, GOOD))
    assert s.study_name == "search" and s.spec.multi
    assert s.spec.budget.limits() == {"params": 2e6, "cache_bytes": 2.0**20}
    assert [p.path for p in s.space.params] == ["layout.count.attn", "mixers.lin.memory", "model.d_model"]
    assert s.tasks[0].vocab_size == 16


@pytest.mark.parametrize("old, new, where, words", [
    ("trials: 3", "trails: 3", ":12:1:", ["unknown key 'trails'", "did you mean 'trials'"]),
    ("steps: 4", "steps: -4", ":10:10:", ["objective.steps", "greater than or equal to 1"]),
    ("mixers.lin.memory:", "mixers.lin.memroy:", ":5:3:", ["space.mixers.lin.memroy", "did you mean 'memory'"]),
    ("mixers.lin.memory:", "mixers.linn.memory:", ":5:3:", ["no mixer 'linn'", "did you mean 'lin'"]),
    ("layout.count.attn", "layout.cuont.attn", ":4:3:", ["unknown layout field", "did you mean 'count'"]),
    ("{int: [0, 2]}", "{int: [2, 0]}", ":4:", ["low 2 is above high 0"]),
    ("{int: [0, 2]}", "{itn: [0, 2]}", ":4:", ["cannot tell the distribution", "did you mean 'int'"]),
    ("params: 2M", "params: 2Q", ":7:", ["budget.params", "cannot read '2Q'"]),
    ("train_flops_per_token: minimize", "train_flop: minimize", ":11:", ["unknown metric 'train_flop'",
                                                                         "did you mean"]),
    ("trials: 3", "trials: 3\nsampler: tpee", ":13:10:", ["sampler.kind", "did you mean 'tpe'"]),
    ("{mqar: {seq_len: 16,", "{mqar: {seq_lenn: 16,", ":9:", ["seq_lenn", "did you mean 'seq_len'"]),
    ("trials: 3", "trials: 3\npruner: median", ":13:", ["pruner 'median' needs a single objective"]),
    ("model.d_model: [16, 32]", "model.vocab_size: [16, 32]", ":6:3:", ["set from the task"]),
])
def test_located_errors(tmp_path: Path, old: str, new: str, where: str, words: list[str]) -> None:
    assert old in GOOD
    _, text = problem(tmp_path, GOOD.replace(old, new))
    assert f"search.yaml{where}" in text, text
    for w in words:
        assert w in text, text


def test_missing_base_and_model_spec_given(tmp_path: Path) -> None:
    _, text = problem(tmp_path, GOOD.replace("base: base.yaml", "base: nowhere.yaml"))
    assert "search.yaml:2:7: base: no such model spec" in text
    _, text = problem(tmp_path, "miras: 1\nname: x\n")
    assert "this is a model spec" in text and "search.yaml:1:1" in text


def test_units() -> None:
    assert parse_amount("4MiB") == 4 * 2**20 and parse_amount("2.5G") == 2.5e9 and parse_amount(7) == 7.0
    with pytest.raises(ValueError):
        parse_amount("-3")


def test_shipped_search_specs_load() -> None:
    shipped = sorted((ROOT / "specs" / "search").glob("*.yaml"))
    searches = [p for p in shipped if "\nmiras-search: 1" in p.read_text()]
    assert {p.name for p in searches} >= {"hybrid-ratio.yaml", "hybrid-ratio-long.yaml"}
    for path in searches:
        s = load_search_spec(path)
        assert s.space.params


def test_cli_exit_2_on_bad_spec(tmp_path: Path) -> None:
    from mirasdsl.cli import main

    path = write_search(tmp_path, GOOD.replace("trials: 3", "trails: 3"))
    assert main(["search", str(path)]) == 2


def test_cli_exit_2_on_unreachable_storage(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mirasdsl.cli import main

    path = write_search(tmp_path, GOOD)
    code = main(["search", str(path), "--storage", "postgresql://nobody@127.0.0.1:1/x", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "cannot open the study storage postgresql://nobody@127.0.0.1:1/x" in err, err
    assert main(["search", str(path), "--storage", "redis://x"]) == 2
