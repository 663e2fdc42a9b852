"""Train one priced candidate on the objective's tasks, with pruning or promotion on the way.

Single-objective studies report every held-out evaluation to Optuna's pruner. Multi-objective
studies (which Optuna does not prune) use asynchronous successive halving: at each rung
``min_steps · η^k`` the trial's proxy score is stored as a user attribute ``rung_<step>``, and the
trial goes on only if it ranks in the best ``ceil(n / η)`` of the ``n`` trials that reached that
rung (with fewer than η there, it goes on).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from mirasdsl.search.spec import TRAINED_METRICS

ProgressFn = Callable[[int, int, dict[str, float]], None]  # (task index, step, scores)


class Stopped(Exception):
    """Successive halving did not promote this trial at a rung."""

    def __init__(self, step: int, score: float, threshold: float) -> None:
        super().__init__(f"not promoted at step {step}: score {score:.4g} below the rung's cut {threshold:.4g}")
        self.step = step
        self.score = score


@dataclass(frozen=True)
class Fidelity:
    """How intermediate scores act: ``pruner`` (single objective), ``halving`` (multi) or neither."""

    mode: str  # "prune" | "halving" | "none"
    metric: str  # the proxy score: the first trained objective
    sign: float  # +1 when higher is better
    rungs: tuple[int, ...] = ()
    eta: int = 3


def proxy_metric(directions: dict[str, str]) -> tuple[str, float]:
    """The first objective that depends on training, and +1 for maximize / -1 for minimize."""
    for metric, direction in directions.items():
        if metric.split(".")[0] in TRAINED_METRICS:
            return metric, 1.0 if direction == "maximize" else -1.0
    raise ValueError("no trained objective")  # excluded by the search spec's checks


def fidelity_for(search: Any) -> Fidelity:
    spec = search.spec
    metric, sign = proxy_metric(spec.objective.directions)
    if spec.pruner.kind == "none":
        return Fidelity("none", metric, sign)
    if not spec.multi:
        return Fidelity("prune", metric, sign)
    total = spec.objective.steps * len(search.tasks)
    eta = spec.pruner.reduction_factor
    every = spec.objective.eval_every or max(1, spec.objective.steps // 4)
    first = spec.pruner.min_steps or max(every, total // eta**2)
    rungs = []
    while first < total:
        rungs.append(first)
        first *= eta
    return Fidelity("halving", metric, sign, tuple(rungs), eta)


def current_score(metric: str, task_names: list[str], done: dict[str, float], now: dict[str, float],
                  task: str) -> float:
    """The proxy metric while task ``task`` trains: its latest value for a per-task metric, else
    the mean over finished tasks and the current one."""
    base, _, which = metric.partition(".")
    if which:
        return now[base] if which == task else done.get(metric, now[base])
    values = [done[f"{base}.{t}"] for t in task_names if f"{base}.{t}" in done] + [now[base]]
    return sum(values) / len(values)


def check_promotion(study: Any, trial: Any, fid: Fidelity, step: int, score: float, passed: set[int]) -> None:
    """Record ``score`` at every rung reached; raise :class:`Stopped` when not promoted."""
    for rung in fid.rungs:
        if rung > step or rung in passed:
            continue
        passed.add(rung)
        key = f"rung_{rung}"
        mine = fid.sign * score
        trial.set_user_attr(key, mine)
        peers = [t.user_attrs[key] for t in study.get_trials(deepcopy=False)
                 if key in t.user_attrs and t.number != trial.number] + [mine]
        if len(peers) < fid.eta:
            continue
        keep = math.ceil(len(peers) / fid.eta)
        cut = sorted(peers, reverse=True)[keep - 1]
        if mine < cut:
            raise Stopped(rung, score, fid.sign * cut)


def train_candidate(search: Any, cand: Any, *, trial: Any, study: Any, device: str,
                    progress: ProgressFn | None = None) -> dict[str, float]:
    """Train ``cand`` on every task; returns accuracy/loss per task and their means.

    Raises ``optuna.TrialPruned`` (pruner), :class:`Stopped` (promotion), ``TrainingDiverged`` and
    whatever the model raises (out of memory, kernel errors): the study records them.
    """
    import optuna
    import torch

    from mirasdsl.blocks import build_model
    from mirasdsl.search.trainer import train

    obj, fid = search.spec.objective, fidelity_for(search)
    names = [t.name for t in search.tasks]
    done: dict[str, float] = {}
    passed: set[int] = set()
    evals: list[list[Any]] = []
    for index, task in enumerate(search.tasks):
        offset = index * obj.steps

        def on_eval(step: int, scores: dict[str, float], task_name: str = task.name, offset: int = offset,
                    index: int = index) -> None:
            score = current_score(fid.metric, names, done, scores, task_name)
            evals.append([task_name, step, round(scores["accuracy"], 6), round(scores["loss"], 6)])
            trial.set_user_attr("evals", evals)  # the learning curve: [task, step, accuracy, loss]
            if progress is not None:
                progress(index, step, scores)
            if fid.mode == "prune":
                trial.report(score, offset + step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at step {offset + step} (score {score:.4g})")
            elif fid.mode == "halving":
                check_promotion(study, trial, fid, offset + step, score, passed)

        torch.manual_seed(search.spec.seed)
        model = build_model(cand.spec)
        result = train(model, task, steps=obj.steps, batch_size=obj.batch_size, lr=obj.lr,
                       weight_decay=obj.weight_decay, warmup=obj.warmup,
                       eval_every=obj.eval_every or max(1, obj.steps // 4), eval_batches=obj.eval_batches,
                       seed=search.spec.seed, device=device, progress=False, on_eval=on_eval)
        done[f"accuracy.{task.name}"] = result.accuracy
        done[f"loss.{task.name}"] = result.loss
        del model
    for base in TRAINED_METRICS:
        done[base] = sum(done[f"{base}.{n}"] for n in names) / len(names)
    return done


def failure_reason(err: BaseException) -> str:
    """One line saying why a candidate failed: divergence, out of memory, or the error itself."""
    from mirasdsl.search.trainer import TrainingDiverged

    text = " ".join(str(err).split())[:400]
    if isinstance(err, TrainingDiverged):
        return f"diverged: {text}"
    if type(err).__name__ == "OutOfMemoryError" or "out of memory" in text.lower():
        return f"out of memory: {text}"
    return f"error: {type(err).__name__}: {text}"


def worst_value(metric: str, direction: str) -> float:
    """What an infeasible candidate reports for an objective it was never trained or priced for."""
    base = metric.split(".")[0]
    if base == "accuracy":
        return 0.0 if direction == "maximize" else 1.0
    return -1e30 if direction == "maximize" else 1e30


def objective_values(directions: dict[str, str], trained: dict[str, float] | None,
                     costs: dict[str, float] | None) -> list[float]:
    """The values of every objective, in order; missing ones get :func:`worst_value`."""
    out = []
    for metric, direction in directions.items():
        source = trained if metric.split(".")[0] in TRAINED_METRICS else costs
        out.append(float(source[metric]) if source is not None and metric in source else worst_value(metric, direction))
    return out
