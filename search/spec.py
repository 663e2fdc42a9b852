"""The search spec (``miras-search: 1``): base spec, space, budget, objective, sampler, storage.

Validation follows the model-spec standard: every problem carries ``file:line:column``, the dotted
path, what is allowed and, for a misspelling, the nearest valid key or value (exit code 2).
The space's dotted paths are checked against the model-spec schema and the base spec here;
whether a sampled point makes a valid model is only known per candidate (see ``space.py``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from mirasdsl.errors import Problem, SpecError, TaskError
from mirasdsl.spec.base import Bool, Frozen, PosInt, Str, tagged
from mirasdsl.spec.errors_map import translate
from mirasdsl.spec.layout import nearest
from mirasdsl.spec.yamlio import Loaded, Positions, load_yaml_file

COST_METRICS = ("params", "train_flops_per_token", "fwd_flops_per_token", "cache_bytes",
                "state_bytes", "kv_bytes", "activation_bytes")
TRAINED_METRICS = ("accuracy", "loss")
SAMPLERS = ("tpe", "nsga2", "gp", "random", "grid")
PRUNERS = ("none", "median", "successive_halving", "hyperband")
_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12,
           "kib": 2.0**10, "mib": 2.0**20, "gib": 2.0**30, "tib": 2.0**40,
           "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12}
_TIME = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_amount(value: Any, units: dict[str, float] = _SUFFIX) -> float:
    """A positive number, or a string such as ``200M``, ``4MiB`` or ``15m`` (with ``units``)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9.eE+\-]+)\s*([A-Za-z]*)\s*", value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in units:
            raise ValueError(f"cannot read {value!r}: expected a number with an optional unit "
                             f"({', '.join(u for u in units if u)})")
        number = float(match.group(1)) * units[unit]
    else:
        raise ValueError(f"expected a number, got {type(value).__name__}")
    if not number > 0:
        raise ValueError(f"must be > 0, got {value!r}")
    return number


Amount = Annotated[float, Field(gt=0)]


class Budget(Frozen):
    """Limits every candidate must meet before it is trained (priced by the cost model)."""

    train_flops_per_token: Amount | None = None
    """Training FLOPs per token (3× forward) at ``context``."""
    fwd_flops_per_token: Amount | None = None
    """Forward FLOPs per token at ``context``."""
    params: Amount | None = None
    """Parameters (embedding and head included)."""
    cache_bytes: Amount | None = None
    """Decode memory of one sequence at ``context``: recurrent state (fp32) plus KV cache (dtype)."""
    activation_bytes: Amount | None = None
    """Activation memory of one training step at the objective's batch size × the task's seq_len."""
    context: PosInt | None = None
    """Sequence length at which FLOPs per token and the cache are priced (default: the longest task)."""
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Dtype of activations and KV cache in the pricing."""

    @model_validator(mode="before")
    @classmethod
    def _units(cls, value: object) -> object:
        if not isinstance(value, dict):
            return value
        out = dict(value)
        for key in ("train_flops_per_token", "fwd_flops_per_token", "params", "cache_bytes",
                    "activation_bytes"):
            if isinstance(out.get(key), str):
                try:
                    out[key] = parse_amount(out[key])
                except ValueError as err:
                    raise ValueError(f"[at {key}] {err}") from None
        return out

    def limits(self) -> dict[str, float]:
        """The limits that are set, by metric name."""
        names = ("train_flops_per_token", "fwd_flops_per_token", "params", "cache_bytes", "activation_bytes")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


class Sampler(Frozen):
    """Which Optuna sampler proposes candidates."""

    kind: Literal["tpe", "nsga2", "gp", "random", "grid"] = "tpe"
    """tpe | nsga2 | gp | random | grid."""
    startup_trials: PosInt | None = None
    """Random trials before TPE or GP start modelling (Optuna's default when null)."""
    population: PosInt | None = None
    """NSGA-II population size (Optuna's default when null)."""
    multivariate: Bool = True
    """TPE: model the parameters jointly."""

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: object) -> object:
        return tagged(value, SAMPLERS)


class Pruner(Frozen):
    """Early stopping on intermediate held-out scores.

    Single-objective studies use Optuna's pruners; multi-objective studies (which Optuna does not
    prune) use ``successive_halving`` as an asynchronous promotion rule on the proxy score.
    """

    kind: Literal["none", "median", "successive_halving", "hyperband"] = "none"
    """none | median | successive_halving | hyperband."""
    min_steps: PosInt | None = None
    """First rung (successive halving, hyperband) or steps before pruning starts (median)."""
    reduction_factor: Annotated[int, Field(ge=2, le=10, strict=True)] = 3
    """Keep the best 1/η at every rung."""
    startup_trials: Annotated[int, Field(ge=0, strict=True)] = 2
    """Median pruner: trials that finish before it prunes."""

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: object) -> object:
        return tagged(value, PRUNERS)


class Heartbeat(Frozen):
    """How a lost worker is noticed and its trial retried (RDB storages: SQLite, PostgreSQL)."""

    interval: Annotated[int, Field(ge=1, strict=True)] = 10
    """Seconds between a running trial's heartbeats."""
    grace: Annotated[int, Field(ge=2, strict=True)] = 60
    """Seconds without a heartbeat after which a running trial is failed and retried."""
    retries: Annotated[int, Field(ge=0, strict=True)] = 2
    """How often one trial is retried after its worker was lost."""

    @model_validator(mode="after")
    def _order(self) -> "Heartbeat":
        if self.grace <= self.interval:
            raise ValueError("[at grace] must be larger than interval")
        return self


class Objective(Frozen):
    """What a candidate is trained on and scored by."""

    task: Any
    """A task: ``mqar``, ``{mqar: {seq_len: 64}}``, or a list of them (scores are averaged)."""
    steps: PosInt = 500
    """Optimiser steps per task."""
    batch_size: PosInt = 32
    lr: Annotated[float, Field(gt=0, le=1)] = 3e-3
    warmup: Annotated[int, Field(ge=0, strict=True)] = 0
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    eval_every: PosInt | None = None
    """Steps between held-out evaluations (default: steps / 4); pruning acts at these."""
    eval_batches: PosInt = 4
    directions: dict[Str, Literal["maximize", "minimize"]] = Field(default_factory=lambda: {"accuracy": "maximize"})
    """Objectives in order, each ``maximize`` or ``minimize``: accuracy, loss (means over tasks),
    accuracy.TASK, loss.TASK, or a priced figure (params, train_flops_per_token, ...)."""

    @field_validator("directions")
    @classmethod
    def _metrics(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("name at least one objective, e.g. {accuracy: maximize}")
        return value


class SearchSpec(Frozen):
    """A whole search spec file (format version ``miras-search: 1``)."""

    miras_search: Literal[1] = Field(alias="miras-search")
    """Search spec format version."""
    base: Str
    """The model spec to start from, relative to this file."""
    description: Str | None = None
    space: dict[Str, Any]
    """Dotted path into the base spec → ``{int: [lo, hi]}``, ``{float: [lo, hi]}``,
    ``{log_float: [lo, hi]}`` or a list of choices (values may be whole sub-trees)."""
    budget: Budget = Budget()
    objective: Objective
    trials: PosInt = 20
    """Trials to finish in the study (over all workers; a rerun resumes up to this many)."""
    timeout: Any = None
    """Stop starting new trials after this long: seconds, or a string such as ``15m``."""
    sampler: Sampler = Sampler()
    pruner: Pruner = Pruner()
    seed: Annotated[int, Field(ge=0, strict=True)] = 0
    """Seed of the sampler and of every training run."""
    storage: Str | None = None
    """sqlite:///path.db (default ``sqlite:///studies/<study_name>.db``) or postgresql://..."""
    study_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]+$", max_length=128, strict=True)] | None = None
    """Name of the study in the storage (default: this file's name without .yaml)."""
    heartbeat: Heartbeat = Heartbeat()

    model_config = Frozen.model_config | {"populate_by_name": True}

    @field_validator("space")
    @classmethod
    def _some(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError("the space is empty: name at least one dotted path to search")
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: Any) -> float | None:
        return None if value is None else parse_amount(value, _TIME)

    @property
    def multi(self) -> bool:
        return len(self.objective.directions) > 1


@dataclass(frozen=True)
class LoadedSearch:
    """A validated search spec with its file's positions and the loaded base spec."""

    spec: SearchSpec
    path: Path
    positions: Positions
    base_path: Path
    base: Loaded
    tasks: tuple[Any, ...]  # TaskConfig per objective task, in order
    space: Any  # search.space.Space

    @property
    def study_name(self) -> str:
        return self.spec.study_name or self.path.name.removesuffix(".yaml").removesuffix(".yml")


def _located(positions: Positions, path: tuple[Any, ...], message: str, expected: str | None = None,
             suggestion: str | None = None, key: bool = False) -> Problem:
    return Problem(message, ".".join(str(p) for p in path), positions.at(path, key=key), expected, suggestion)


def _task_list(value: Any) -> list[tuple[str, dict[str, Any]]]:
    """``mqar`` | ``{mqar: {...}}`` | list of those → [(name, params)]."""
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, str):
            out.append((item, {}))
        elif isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item.values())), (dict, type(None))):
            name, params = next(iter(item.items()))
            out.append((name, dict(params or {})))
        else:
            raise ValueError("expected a task name, {name: {settings}} or a list of them")
    return out


def make_tasks(spec: SearchSpec, positions: Positions) -> tuple[Any, ...]:
    """Build the objective's task configs; problems are placed at ``objective.task``."""
    from mirasdsl.search.tasks import make_task

    where = ("objective", "task")
    try:
        items = _task_list(spec.objective.task)
    except ValueError as err:
        raise SpecError("invalid search spec", [_located(positions, where, str(err))]) from None
    tasks = []
    for i, (name, params) in enumerate(items):
        at = where + ((i,) if isinstance(spec.objective.task, list) else ()) + (name,)
        try:
            tasks.append(make_task(name, **params))
        except TaskError as err:
            raise SpecError("invalid search spec", [
                _located(positions, at + ((p.path,) if p.path and p.path != "task" else ()),
                         f"{err.message}: {p.message}", p.expected, p.suggestion) for p in err.problems]
                or [_located(positions, at, err.message)]) from None
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise SpecError("invalid search spec", [_located(positions, where, "a task is listed twice")])
    return tuple(tasks)


def metric_names(tasks: tuple[Any, ...]) -> list[str]:
    """Every metric an objective may name for these tasks."""
    per_task = [f"{m}.{t.name}" for t in tasks for m in TRAINED_METRICS]
    return [*TRAINED_METRICS, *per_task, *COST_METRICS]


def _check_directions(spec: SearchSpec, tasks: tuple[Any, ...], positions: Positions) -> None:
    allowed = metric_names(tasks)
    problems = [_located(positions, ("objective", "directions", m), f"unknown metric {m!r}",
                         ", ".join(allowed), nearest(m, allowed), key=True)
                for m in spec.objective.directions if m not in allowed]
    if not any(m.split(".")[0] in TRAINED_METRICS for m in spec.objective.directions):
        problems.append(_located(positions, ("objective", "directions"),
                                 "no objective depends on training (all are priced figures)",
                                 "at least one of accuracy, loss (or accuracy.TASK, loss.TASK)"))
    if problems:
        raise SpecError("invalid search spec", problems)


def _check_fidelity(spec: SearchSpec, positions: Positions) -> None:
    if spec.multi and spec.pruner.kind in ("median", "hyperband"):
        raise SpecError("invalid search spec", [_located(
            positions, ("pruner",), f"pruner {spec.pruner.kind!r} needs a single objective; this study has "
            f"{len(spec.objective.directions)}", "none or successive_halving (promotion on the proxy score)")])


def load_search_spec(path: str | Path) -> LoadedSearch:
    """Read and validate a search spec and its base spec. Raises :class:`SpecError`."""
    from mirasdsl.search.space import parse_space

    path = Path(path)
    loaded = load_yaml_file(path)
    data = loaded.data
    if not isinstance(data, dict):
        raise SpecError("invalid search spec", [Problem(
            f"the file holds {type(data).__name__}, expected a mapping with keys miras-search, base, "
            "space, objective", location=loaded.positions.at(()))])
    if "miras" in data and "miras-search" not in data:
        raise SpecError("invalid search spec", [Problem(
            "this is a model spec (it has 'miras:'); `miras search` needs a search spec",
            "miras", loaded.positions.at(("miras",), key=True), "a file starting with 'miras-search: 1'")])
    try:
        spec = SearchSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError("invalid search spec", translate(err, data, loaded.positions, SearchSpec)) from None
    base_path = (path.parent / spec.base).resolve() if not Path(spec.base).is_absolute() else Path(spec.base)
    if not base_path.is_file():
        raise SpecError("invalid search spec", [_located(
            loaded.positions, ("base",), f"no such model spec: {base_path}", "a model spec file, relative to this file")])
    base = load_yaml_file(base_path)
    from mirasdsl.spec.load import spec_from_loaded

    spec_from_loaded(base)  # the base itself must be valid (its own errors point into its file)
    tasks = make_tasks(spec, loaded.positions)
    _check_directions(spec, tasks, loaded.positions)
    _check_fidelity(spec, loaded.positions)
    space = parse_space(spec.space, base.data, loaded.positions, grid=spec.sampler.kind == "grid")
    return LoadedSearch(spec, path, loaded.positions, base_path, base, tasks, space)
