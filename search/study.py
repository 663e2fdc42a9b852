"""The worker loop of ``miras search``: ask a candidate, price it, train it or refuse it, tell.

Several workers (on one machine or many) run this loop on one study. The study finishes
``trials`` *slots*: a slot is a new trial (not a retry); its result is the last attempt at it.
Before asking, a worker fails stale trials (heartbeat; their retry is enqueued) and counts
finished and pending slots; when the rest are running elsewhere it waits for them to finish or go
stale. A new trial whose number ranks beyond ``trials`` among the slots (two workers asked at
once) is closed unrun as ``surplus``, so no slot is ever run twice.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from mirasdsl.errors import SpecError, UserError
from mirasdsl.search import budget as bud
from mirasdsl.search.objective import (Stopped, failure_reason, objective_values,
                                       train_candidate)
from mirasdsl.search.storage import RETRY_OF, open_storage, requeue

STATUS = "status"  # user attr: ok | infeasible | failed | pruned | stopped | surplus | interrupted


@dataclass(frozen=True)
class Accounting:
    done: int  # slots whose last attempt finished
    pending: int  # slots running or waiting (retries) now
    waiting: int


def is_retry(trial: Any) -> bool:
    return RETRY_OF in trial.user_attrs


def account(trials: list[Any], wanted: int) -> Accounting:
    """Count finished and pending slots among ``trials`` (FrozenTrials of the study)."""
    from optuna.trial import TrialState

    superseded = {t.user_attrs[RETRY_OF] for t in trials if is_retry(t)}
    slots = sorted(t.number for t in trials if not is_retry(t))[:wanted]
    in_slot = set(slots)
    done = pending = waiting = 0
    for t in trials:
        if not (t.number in in_slot or is_retry(t)) or t.number in superseded:
            continue
        if t.state.is_finished():
            done += 1
        else:
            pending += 1
            waiting += t.state == TrialState.WAITING
    return Accounting(done, pending, waiting)


def quiet_optuna() -> None:
    """Silence Optuna's experimental-feature notes and its advice to use Study.optimize (this loop
    records heartbeats itself)."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


def make_sampler(search: Any) -> Any:
    """The Optuna sampler of the spec. TPE, NSGA-II and GP learn from the constraint values each
    trial sets (``Trial.set_constraint``) before it is told."""
    import optuna

    spec = search.spec
    s = spec.sampler
    quiet_optuna()
    if s.kind == "tpe":
        kw = {"n_startup_trials": s.startup_trials} if s.startup_trials else {}
        return optuna.samplers.TPESampler(seed=spec.seed, multivariate=s.multivariate, **kw)
    if s.kind == "nsga2":
        kw = {"population_size": s.population} if s.population else {}
        return optuna.samplers.NSGAIISampler(seed=spec.seed, **kw)
    if s.kind == "gp":
        kw = {"n_startup_trials": s.startup_trials} if s.startup_trials else {}
        return optuna.samplers.GPSampler(seed=spec.seed, **kw)
    if s.kind == "grid":
        return _grid_class()(search.space.grid(), seed=spec.seed)
    return optuna.samplers.RandomSampler(seed=spec.seed)


def _grid_class() -> type:
    import optuna

    class Grid(optuna.samplers.GridSampler):
        """Optuna's grid sampler without its ``study.stop()`` once the grid is used up: that only
        works inside ``Study.optimize``; this loop stops by counting finished trials."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return Grid


def make_pruner(search: Any) -> Any:
    import optuna

    p, total = search.spec.pruner, search.spec.objective.steps * len(search.tasks)
    if search.spec.multi or p.kind == "none":
        return optuna.pruners.NopPruner()
    if p.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.min_steps or 0)
    if p.kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_steps or "auto",
                                                      reduction_factor=p.reduction_factor)
    return optuna.pruners.HyperbandPruner(min_resource=p.min_steps or 1, max_resource=total,
                                          reduction_factor=p.reduction_factor)


def open_study(search: Any, url: str, study_name: str, create: bool = True) -> Any:
    """Create or load the study; a study of the same name with other objectives is refused."""
    import optuna

    hb = search.spec.heartbeat
    storage = open_storage(url, hb.interval, hb.grace, hb.retries)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not create and study_name not in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
        raise UserError(f"the storage holds no study {study_name!r}: nothing to report (run the search first)")
    directions = list(search.spec.objective.directions.values())
    study = optuna.create_study(storage=storage, study_name=study_name, load_if_exists=True,
                                sampler=make_sampler(search),
                                pruner=make_pruner(search), directions=directions)
    have = [d.name.lower() for d in study.directions]
    if have != directions:
        raise UserError(f"study {study_name!r} in this storage optimises {have}, but the spec asks for "
                        f"{directions}; give the spec another study_name or use --study-name")
    metrics = list(search.spec.objective.directions)
    space = [describe_param(p) for p in search.space.params]
    if "metrics" not in study.user_attrs:
        study.set_user_attr("metrics", metrics)
        study.set_user_attr("space", space)
    elif study.user_attrs["metrics"] != metrics:
        raise UserError(f"study {study_name!r} holds objectives {study.user_attrs['metrics']}, the spec "
                        f"names {metrics}; give the spec another study_name")
    elif study.user_attrs.get("space") != space:
        raise UserError(f"study {study_name!r} was run over another space (the spec's space changed "
                        "since); give the spec another study_name or use --study-name")
    return study


def describe_param(p: Any) -> dict[str, Any]:
    """A parameter's distribution as plain data (stored with the study to detect a changed space)."""
    return {"path": p.path, "kind": p.kind, "low": p.low, "high": p.high, "step": p.step, "log": p.log,
            "choices": [str(c) for c in p.labels]}


class Heartbeat:
    """Records a running trial's heartbeat every ``interval`` seconds on a thread."""

    def __init__(self, storage: Any, trial_id: int, interval: int) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(storage, trial_id, interval), daemon=True)

    def _beat(self, storage: Any, trial_id: int, interval: int) -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # a lost connection: the trial will look stale, which is right
                pass
            if self._stop.wait(interval):
                return

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _constrain(trial: Any, limits: dict[str, float], metrics: dict[str, float] | None) -> None:
    """Set the trial's constraint values (<= 0 feasible) for the sampler, and keep a copy to show."""
    values = bud.constraints(metrics, limits)
    trial.set_user_attr("constraints", values)
    for name, value in zip([*limits, "valid_spec"], values):
        trial.set_constraint(name, value)


def _describe(trial: Any, cand: bud.Candidate) -> None:
    from mirasdsl.report import layout_text, tuple_text
    from mirasdsl.spec.model import TupleMixer

    trial.set_user_attr("layout", layout_text(list(cand.layers)))
    used = dict.fromkeys(cand.layers)
    trial.set_user_attr("tuples", {n: tuple_text(m) if isinstance(m, TupleMixer) else "parallel"
                                   for n, m in cand.spec.mixers.items() if n in used})
    trial.set_user_attr("spec", cand.data)
    trial.set_user_attr("costs", cand.metrics)


def run_trial(study: Any, trial: Any, search: Any, device: str, on_progress: Callable | None) -> str:
    """Evaluate one asked trial and tell the study. Returns its status."""
    import optuna
    from optuna.trial import TrialState

    limits = search.spec.budget.limits()
    directions = search.spec.objective.directions
    point = search.space.suggest(trial)
    try:
        cand = bud.make_candidate(search, point, name=f"{search.base.data.get('name', 'model')}-trial{trial.number}")
    except SpecError as err:
        text = bud.spec_error_text(err)
        trial.set_user_attr(STATUS, "infeasible")
        trial.set_user_attr("reason", f"invalid spec: {text}")
        _constrain(trial, limits, None)
        study.tell(trial, objective_values(directions, None, None))
        return "infeasible"
    _describe(trial, cand)
    _constrain(trial, limits, cand.metrics)
    if cand.violations:
        trial.set_user_attr(STATUS, "infeasible")
        trial.set_user_attr("reason", "over budget: " + "; ".join(cand.violations))
        study.tell(trial, objective_values(directions, None, cand.metrics))
        return "infeasible"
    start = time.perf_counter()
    try:
        trained = train_candidate(search, cand, trial=trial, study=study, device=device, progress=on_progress)
    except optuna.TrialPruned as err:
        trial.set_user_attr(STATUS, "pruned")
        trial.set_user_attr("reason", str(err))
        study.tell(trial, state=TrialState.PRUNED)
        return "pruned"
    except Stopped as err:
        trial.set_user_attr(STATUS, "stopped")
        trial.set_user_attr("reason", str(err))
        study.tell(trial, state=TrialState.PRUNED)
        return "stopped"
    except Exception as err:  # NaN, out of memory, kernel errors: record and go on
        trial.set_user_attr(STATUS, "failed")
        trial.set_user_attr("reason", failure_reason(err))
        study.tell(trial, state=TrialState.FAIL)
        return "failed"
    trial.set_user_attr("trained", trained)
    trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
    trial.set_user_attr(STATUS, "ok")
    study.tell(trial, objective_values(directions, trained, cand.metrics))
    return "ok"


def _surplus(trials: list[Any], trial: Any, wanted: int) -> bool:
    if is_retry(trial):
        return False
    earlier = sum(1 for t in trials if not is_retry(t) and t.number < trial.number)
    return earlier >= wanted


def work(study: Any, search: Any, *, wanted: int, timeout: float | None, device: str,
         ui: Any, poll: float = 1.0) -> int:
    """Run trials until the study has ``wanted`` finished slots (or ``timeout``). Returns trials run."""
    import optuna

    quiet_optuna()
    start, ran = time.monotonic(), 0
    while True:
        optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        acc = account(trials, wanted)
        ui.status(acc, wanted)
        if acc.done >= wanted or (timeout is not None and time.monotonic() - start > timeout):
            return ran
        if acc.done + acc.pending >= wanted and acc.waiting == 0:
            time.sleep(poll)  # the rest run elsewhere: wait for them to finish or go stale
            continue
        trial = study.ask()
        with Heartbeat(study._storage, trial._trial_id, search.spec.heartbeat.interval):
            status = _run_one(study, trial, search, device, wanted, ui)
        if status is not None:
            ran += 1
            ui.finished(study._storage.get_trial(trial._trial_id), status)


def _run_one(study: Any, trial: Any, search: Any, device: str, wanted: int, ui: Any) -> str | None:
    """Run an asked trial (heartbeat already beating); None when it was surplus."""
    from optuna.trial import TrialState

    if _surplus(study.get_trials(deepcopy=False, states=None), trial, wanted):
        trial.set_user_attr(STATUS, "surplus")
        study.tell(trial, state=TrialState.FAIL)
        return None
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    ui.started(trial)
    try:
        status = run_trial(study, trial, search, device, ui.progress)
    except KeyboardInterrupt:
        trial.set_user_attr(STATUS, "interrupted")
        study.tell(trial, state=TrialState.FAIL)
        requeue(study, study._storage.get_trial(trial._trial_id), "interrupted (Ctrl-C); run again")
        raise
    return status
