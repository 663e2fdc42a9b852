"""A whole tiny study end to end, resume, budget refusal before training, failing candidates,
promotion for multi-objective studies and the slot accounting that keeps trials exact."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import optuna
import pytest
import torch

from mirasdsl.cli import main
from mirasdsl.search import study as study_mod
from mirasdsl.search.objective import Fidelity, Stopped, check_promotion
from mirasdsl.search.trainer import TrainingDiverged
from test_search_helpers import write_search


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def load(tmp_path: Path, name: str = "search") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/studies/{name}.db")


def counting(monkeypatch: pytest.MonkeyPatch, fail: Any = None) -> list[dict[str, Any]]:
    """Wrap the trainer entry point: record each trained candidate's point, optionally raise."""
    calls: list[dict[str, Any]] = []
    real = study_mod.train_candidate

    def wrapped(search: Any, cand: Any, **kw: Any) -> dict[str, float]:
        calls.append(dict(cand.point))
        if fail is not None and fail(cand.point) is not None:
            raise fail(cand.point)
        return real(search, cand, **kw)

    monkeypatch.setattr(study_mod, "train_candidate", wrapped)
    return calls


def test_end_to_end_then_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    write_search(tmp_path, objective={
        "task": {"mqar": {"seq_len": 16, "kv_pairs": 2, "vocab_size": 16}}, "steps": 4, "batch_size": 4,
        "eval_every": 2, "eval_batches": 1, "directions": {"accuracy": "maximize", "params": "minimize"}},
        pruner="successive_halving")
    assert main(["search", "search.yaml"]) == 0
    out = capsys.readouterr().out
    assert "ranked" in out and "rank" in out and "best spec" in out
    folder = tmp_path / "studies" / "search"
    for png in ("pareto.png", "history.png", "params.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["compile", str(folder / "best.yaml")]) == 0
    rows = json.loads((folder / "results.json").read_text())
    assert len(rows) == 3 and rows[0]["rank"] == 1 and rows[0]["layout"]
    first = load(tmp_path).trials[0]
    assert [e[1] for e in first.user_attrs["evals"]] == [2, 4]  # the learning curve is kept
    assert len(load(tmp_path).trials) == 3
    # rerunning resumes: nothing new to do; more trials continue the same study
    assert main(["search", "search.yaml"]) == 0
    assert len(load(tmp_path).trials) == 3
    assert main(["search", "search.yaml", "--trials", "5"]) == 0
    trials = load(tmp_path).trials
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert all(t.state.is_finished() for t in trials)


def test_over_budget_candidates_are_never_trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    calls = counting(monkeypatch)
    # d_model 16 fits 20k parameters, d_model 48 does not
    write_search(tmp_path, space={"model.d_model": [16, 48]}, budget={"params": 2.0e4}, trials=6)
    assert main(["search", "search.yaml"]) == 0
    trials = load(tmp_path).trials
    over = [t for t in trials if t.params["model.d_model"] == 48]
    fits = [t for t in trials if t.params["model.d_model"] == 16]
    assert over and fits
    assert len(calls) == len(fits) and all(c["model.d_model"] == 16 for c in calls)
    for t in over:
        assert t.user_attrs["status"] == "infeasible"
        assert t.user_attrs["reason"].startswith("over budget: params")
        assert t.user_attrs["constraints"][0] > 0  # the sampler sees the violation
        assert t.state == optuna.trial.TrialState.COMPLETE
    assert all(t.user_attrs["status"] == "ok" and t.user_attrs["constraints"][0] <= 0 for t in fits)


def test_invalid_candidate_recorded_with_spec_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    calls = counting(monkeypatch)
    write_search(tmp_path, space={"mixers.lin.memory": ["matrix", "softmax"]}, trials=4)
    assert main(["search", "search.yaml"]) == 0
    bad = [t for t in load(tmp_path).trials if t.params["mixers.lin.memory"] == "softmax"]
    assert bad and len(calls) == 4 - len(bad)
    assert all(t.user_attrs["reason"].startswith("invalid spec: mixers.lin") for t in bad)


def test_failing_candidates_recorded_and_study_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    def fail(point: dict[str, Any]) -> Exception | None:
        if point["layout.count.attn"] == 0:
            return TrainingDiverged(3, "the training loss", float("nan"))
        if point["layout.count.attn"] == 2:
            return RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return None

    calls = counting(monkeypatch, fail)
    write_search(tmp_path, trials=5)
    assert main(["search", "search.yaml"]) == 0
    trials = load(tmp_path).trials
    assert len(trials) == 5 and len(calls) == 5
    for t in trials:
        count = t.params["layout.count.attn"]
        if count == 1:
            assert t.state == optuna.trial.TrialState.COMPLETE
        else:
            assert t.state == optuna.trial.TrialState.FAIL and t.user_attrs["status"] == "failed"
            assert t.user_attrs["reason"].startswith("diverged: training diverged at step 3" if count == 0
                                                     else "out of memory: CUDA out of memory")


def test_promotion_keeps_the_best_third() -> None:
    fid = Fidelity("halving", "accuracy", 1.0, rungs=(10, 30), eta=3)
    peers = [SimpleNamespace(number=i, user_attrs={"rung_10": s}) for i, s in enumerate([0.9, 0.8, 0.1, 0.2, 0.3])]
    study = SimpleNamespace(get_trials=lambda deepcopy=False: peers)

    def trial(number: int) -> Any:
        attrs: dict[str, float] = {}
        return SimpleNamespace(number=number, user_attrs=attrs, set_user_attr=attrs.__setitem__)

    good = trial(9)
    check_promotion(study, good, fid, 10, 0.85, set())  # 6 at the rung: best 2 go on; 0.85 is 2nd
    assert good.user_attrs == {"rung_10": 0.85}
    with pytest.raises(Stopped):
        check_promotion(study, trial(10), fid, 12, 0.5, set())
    lonely = SimpleNamespace(get_trials=lambda deepcopy=False: [])
    check_promotion(lonely, trial(11), fid, 40, 0.0, set())  # fewer than η at the rung: goes on


def test_accounting_counts_slots_retries_and_surplus() -> None:
    state = optuna.trial.TrialState

    def t(number: int, s: Any, **attrs: Any) -> Any:
        return SimpleNamespace(number=number, state=s, user_attrs=attrs)

    trials = [t(0, state.COMPLETE), t(1, state.FAIL), t(2, state.RUNNING),
              t(3, state.WAITING, retry_of=1, attempt=1), t(4, state.COMPLETE)]
    acc = study_mod.account(trials, wanted=3)
    assert (acc.done, acc.pending, acc.waiting) == (1, 2, 1)  # 1 superseded by its retry 3; 4 is surplus
    assert study_mod._surplus(trials, trials[4], 3) and not study_mod._surplus(trials, trials[3], 3)


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp", "grid"])
def test_every_sampler_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sampler: str) -> None:
    monkeypatch.chdir(tmp_path)
    space = {"mixers.lin.bias": ["dot", "l2"]} if sampler == "grid" else None  # grid used up at the end
    write_search(tmp_path, sampler=sampler, trials=2, **({"space": space} if space else {}), objective={
        "task": "mqar", "steps": 2, "batch_size": 2, "eval_batches": 1,
        "directions": {"accuracy": "maximize", "train_flops_per_token": "minimize"}})
    assert main(["search", "search.yaml"]) == 0
    assert [t.state.name for t in load(tmp_path).trials] == ["COMPLETE", "COMPLETE"]
    assert main(["search", "search.yaml", "--report"]) == 0
    assert main(["search", "search.yaml", "--report", "--study-name", "other"]) == 2


@pytest.mark.parametrize("pruner", ["median", "successive_halving", "hyperband"])
def test_single_objective_pruners(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pruner: str) -> None:
    monkeypatch.chdir(tmp_path)
    write_search(tmp_path, sampler="tpe", trials=4, pruner={"kind": pruner, "min_steps": 1},
                 objective={"task": "mqar", "steps": 4, "batch_size": 2, "eval_every": 1, "eval_batches": 1,
                            "directions": {"loss": "minimize"}})
    assert main(["search", "search.yaml"]) == 0
    trials = load(tmp_path).trials
    assert len(trials) == 4 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert all(len(t.intermediate_values) >= 1 for t in trials)  # every evaluation reached the pruner


def test_changed_space_is_refused_on_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    write_search(tmp_path, trials=1, objective={"task": "mqar", "steps": 2, "batch_size": 2, "eval_batches": 1})
    assert main(["search", "search.yaml"]) == 0
    write_search(tmp_path, trials=2, space={"layout.count.attn": {"int": [0, 2]}, "mixers.lin.bias": ["dot", "lp"]},
                 objective={"task": "mqar", "steps": 2, "batch_size": 2, "eval_batches": 1})
    assert main(["search", "search.yaml"]) == 2
    assert "was run over another space" in capsys.readouterr().err
