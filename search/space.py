"""The search space: dotted paths into the base spec and the values each may take.

``layout.ratio.attn: {int: [0, 4]}`` sets one entry of the base layout's ratio;
``layout.count.attn: {int: [0, 4]}`` (an extension) gives exactly that many layers to ``attn``
and the rest to the base's other mixer, so 0 is no attention and ``n_layers`` is all attention.
Categorical values may be whole sub-trees (``mixers.gdn.memory: [matrix, {mlp: {depth: 2}}]``);
Optuna stores such a choice under a short label.
"""
from __future__ import annotations

import copy
import itertools
import json
import math
import random
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from mirasdsl.errors import Problem, SpecError
from mirasdsl.spec.base import tagged
from mirasdsl.spec.errors_map import KINDS_BY_KEY, _unwrap
from mirasdsl.spec.layout import nearest
from mirasdsl.spec.model import ModelSizes, ParallelMixer, TupleMixer
from mirasdsl.spec.yamlio import Positions

DIST_KINDS = ("int", "float", "log_float", "categorical")
_ALL_KINDS = tuple(dict.fromkeys(k for ks in KINDS_BY_KEY.values() for k in ks))
_LAYOUT_KEYS = ("ratio", "count", "pattern", "indices", "default")


def label(value: Any) -> Any:
    """How a categorical choice is stored in Optuna: scalars as they are, sub-trees in YAML flow
    style (``{mlp: {depth: 2}}``)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return _flow(value)


def _flow(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) and not value.replace("_", "").isalnum() else str(value)


@dataclass(frozen=True)
class Param:
    """One searched field: a dotted path and its distribution."""

    path: str
    kind: str  # int | float | categorical
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    @property
    def labels(self) -> tuple[Any, ...]:
        return tuple(label(c) for c in self.choices)

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter from an Optuna trial; returns the spec value."""
        if self.kind == "int":
            return trial.suggest_int(self.path, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        if self.kind == "float":
            return trial.suggest_float(self.path, self.low, self.high, step=self.step, log=self.log)
        picked = trial.suggest_categorical(self.path, list(self.labels))
        return self.choices[self.labels.index(picked)]

    def value_of(self, stored: Any) -> Any:
        """The spec value of a parameter as Optuna stored it."""
        if self.kind != "categorical":
            return stored
        return self.choices[self.labels.index(stored)] if stored in self.labels else stored

    def grid(self) -> list[Any]:
        """Every value, for the grid sampler (Optuna's stored form)."""
        if self.kind == "categorical":
            return list(self.labels)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        n = int(round((self.high - self.low) / self.step))
        return [self.low + i * self.step for i in range(n + 1)]

    def corners(self) -> list[Any]:
        """Extreme values (every choice of a categorical), in stored form."""
        if self.kind == "categorical":
            return list(self.labels)
        low, high = (int(self.low), int(self.high)) if self.kind == "int" else (self.low, self.high)
        return [low] if low == high else [low, high]

    def random(self, rng: random.Random) -> Any:
        if self.kind == "categorical":
            return rng.choice(self.labels)
        if self.kind == "int":
            return rng.randrange(int(self.low), int(self.high) + 1, int(self.step or 1))
        if self.log:
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return rng.uniform(self.low, self.high)


@dataclass(frozen=True)
class Space:
    """The parameters, in file order."""

    params: tuple[Param, ...]
    n_layers_path: str = "model.n_layers"
    others: dict[str, str] = field(default_factory=dict)  # count-mixer -> the other mixer

    def suggest(self, trial: Any) -> dict[str, Any]:
        return {p.path: p.suggest(trial) for p in self.params}

    def from_stored(self, stored: dict[str, Any]) -> dict[str, Any]:
        by_path = {p.path: p for p in self.params}
        return {k: by_path[k].value_of(v) if k in by_path else v for k, v in stored.items()}

    def grid(self) -> dict[str, list[Any]]:
        return {p.path: p.grid() for p in self.params}

    def sample_points(self, limit: int = 256, seed: int = 0) -> list[dict[str, Any]]:
        """Corner combinations (all, or a sample of ``limit``) plus random points, spec values."""
        rng = random.Random(seed)
        corners = [p.corners() for p in self.params]
        total = math.prod(len(c) for c in corners)
        if total <= limit:
            stored = [dict(zip([p.path for p in self.params], combo)) for combo in itertools.product(*corners)]
        else:
            stored = [{p.path: rng.choice(c) for p, c in zip(self.params, corners)} for _ in range(limit)]
        stored += [{p.path: p.random(rng) for p in self.params} for _ in range(min(64, limit))]
        return [self.from_stored(s) for s in stored]

    def apply(self, base: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
        """The base spec data with every point value laid at its path (``layout.count`` last)."""
        data = copy.deepcopy(base)
        forms = {path.split(".")[1] for path in point if path.startswith("layout.")} & {"ratio", "pattern", "indices"}
        if forms and isinstance(data.get("layout"), dict):  # a searched form replaces the base's other forms
            drop = {"ratio", "pattern", "indices", "default"} - forms - ({"default"} if "indices" in forms else set())
            data["layout"] = {k: v for k, v in data["layout"].items() if k not in drop}
        counts = {}
        for path, value in point.items():
            parts = path.split(".")
            if parts[:2] == ["layout", "count"]:
                counts[parts[2]] = value
            else:
                set_path(data, parts, copy.deepcopy(value))
        for name, k in counts.items():
            n_layers = data.get("model", {}).get("n_layers")
            other = self.others[name]
            if not isinstance(n_layers, int) or not 0 <= k <= n_layers:
                raise SpecError("invalid candidate", [Problem(
                    f"layout.count.{name} = {k} does not fit n_layers = {n_layers}", f"layout.count.{name}",
                    expected="0 .. n_layers")])
            data["layout"] = {"ratio": {other: n_layers - k, name: k}}
        return data


def set_path(data: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set ``data[p0][p1]...`` = value, creating mappings and opening shorthands on the way."""
    cur = data
    for key in parts[:-1]:
        nxt = cur.get(key)
        if isinstance(nxt, str):
            nxt = {"kind": nxt}
        elif isinstance(nxt, dict):
            nxt = tagged(nxt, _ALL_KINDS) if key in KINDS_BY_KEY else dict(nxt)
        else:
            nxt = {}
        cur[key] = nxt
        cur = nxt
    cur[parts[-1]] = value


# ---------------------------------------------------------------- parsing and path checks


def _fail(positions: Positions, path: tuple[Any, ...], message: str, expected: str | None = None,
          suggestion: str | None = None, key: bool = False) -> SpecError:
    dotted = ".".join(str(p) for p in path)
    return SpecError("invalid search spec", [Problem(message, dotted, positions.at(path, key=key), expected, suggestion)])


def _fields(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]


def _check_model_path(tp: Any, parts: list[str], where: tuple[Any, ...], positions: Positions) -> None:
    """Each part must be a field of some alternative of the type reached so far."""
    for i, part in enumerate(parts):
        models = [a for a in _unwrap(tp) if isinstance(a, type) and issubclass(a, BaseModel)]
        dicts = [a for a in _unwrap(tp) if getattr(a, "__origin__", None) is dict]
        if dicts and not models:
            tp = dicts[0].__args__[1]
            continue
        names = list(dict.fromkeys(n for m in models for n in _fields(m)))
        if part not in names:
            done = ".".join(parts[:i]) or "(top)"
            raise _fail(positions, where, f"{part!r} is not a field at {done}", ", ".join(names) or "no sub-fields here",
                        nearest(part, names), key=True)
        tp = next(f.annotation for m in models for n, f in m.model_fields.items() if part in (n, f.alias))


def check_path(path: str, base: dict[str, Any], positions: Positions) -> None:
    """Refuse a dotted path that is not a field of the model spec (or names a mixer the base lacks)."""
    where = ("space", path)
    parts = path.split(".")
    mixers = sorted(base.get("mixers") or {})
    roots = ["model", "mixers", "layout"]
    if parts[0] not in roots or len(parts) < 2:
        raise _fail(positions, where, f"a searched path starts with model., mixers. or layout. (got {path!r})",
                    "model.FIELD, mixers.NAME.FIELD, layout.ratio.NAME, layout.count.NAME",
                    nearest(parts[0], roots), key=True)
    if parts[0] == "model":
        if parts[1] == "vocab_size":
            raise _fail(positions, where, "model.vocab_size is set from the task's vocabulary; it cannot be searched",
                        key=True)
        _check_model_path(ModelSizes, parts[1:], where, positions)
    elif parts[0] == "mixers":
        if parts[1] not in mixers:
            raise _fail(positions, where, f"the base spec has no mixer {parts[1]!r}", ", ".join(mixers),
                        nearest(parts[1], mixers), key=True)
        if len(parts) > 2:
            kind = ParallelMixer if "branches" in (base["mixers"][parts[1]] or {}) else TupleMixer
            _check_model_path(kind, parts[2:], where, positions)
    else:
        if parts[1] not in _LAYOUT_KEYS:
            raise _fail(positions, where, f"unknown layout field {parts[1]!r}", ", ".join(_LAYOUT_KEYS),
                        nearest(parts[1], _LAYOUT_KEYS), key=True)
        if parts[1] in ("ratio", "count", "indices") and (len(parts) != 3 or parts[2] not in mixers):
            name = parts[2] if len(parts) > 2 else ""
            raise _fail(positions, where, f"layout.{parts[1]} needs one mixer of the base spec (got {name!r})",
                        ", ".join(mixers), nearest(name, mixers), key=True)


def _range(raw: Any, positions: Positions, where: tuple[Any, ...], kind: str) -> tuple[float, float]:
    ok = (isinstance(raw, list) and len(raw) == 2
          and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in raw)
          and (kind != "int" or all(isinstance(x, int) for x in raw)))
    if not ok:
        what = "integers" if kind == "int" else "numbers"
        raise _fail(positions, where, f"expected [low, high] ({what}), got {raw!r}", "[low, high] with low <= high")
    if raw[0] > raw[1]:
        raise _fail(positions, where, f"low {raw[0]} is above high {raw[1]}", "[low, high] with low <= high")
    return raw[0], raw[1]


def parse_param(path: str, raw: Any, positions: Positions) -> Param:
    """One space entry → :class:`Param` (located errors)."""
    where = ("space", path)
    if isinstance(raw, list):
        raw = {"categorical": raw}
    kinds = [k for k in DIST_KINDS if isinstance(raw, dict) and k in raw]
    if not isinstance(raw, dict) or len(kinds) != 1:
        keys = list(raw) if isinstance(raw, dict) else []
        guess = next((nearest(k, DIST_KINDS) for k in keys if nearest(k, DIST_KINDS)), None)
        raise _fail(positions, where, f"cannot tell the distribution of {raw!r}",
                    "a list of choices, {int: [lo, hi]}, {float: [lo, hi]} or {log_float: [lo, hi]} "
                    "(options: step, log)", guess)
    kind = kinds[0]
    extra = [k for k in raw if k not in (kind, "step", "log")]
    if extra:
        raise _fail(positions, where + (extra[0],), f"unknown option {extra[0]!r}", "step, log",
                    nearest(extra[0], ["step", "log"]), key=True)
    if kind == "categorical":
        choices = raw[kind]
        if not isinstance(choices, list) or not choices:
            raise _fail(positions, where, "a categorical needs a non-empty list of choices")
        labels = [label(c) for c in choices]
        if len(set(map(str, labels))) != len(labels):
            raise _fail(positions, where, "a choice is listed twice")
        return Param(path, "categorical", choices=tuple(choices))
    low, high = _range(raw[kind], positions, where + (kind,), kind)
    step, log = raw.get("step"), bool(raw.get("log", kind == "log_float"))
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0
                             or (kind == "int" and not isinstance(step, int))):
        raise _fail(positions, where + ("step",), f"step must be a positive {'integer' if kind == 'int' else 'number'}")
    if log and (low <= 0 or step is not None and step != 1):
        raise _fail(positions, where, "a log scale needs low > 0 and no step")
    return Param(path, "int" if kind == "int" else "float", float(low), float(high), step, log)


def parse_space(raw: dict[str, Any], base: dict[str, Any], positions: Positions, grid: bool = False) -> Space:
    """Check every path against the base and the model-spec schema and parse its distribution."""
    params = []
    others: dict[str, str] = {}
    for path, dist in raw.items():
        check_path(path, base, positions)
        param = parse_param(path, dist, positions)
        if grid and param.kind == "float" and param.step is None:
            raise _fail(positions, ("space", path), "the grid sampler needs a finite set of values",
                        "a list, an int range, or a float range with a step")
        if path.startswith("layout.count."):
            name = path.split(".")[2]
            rest = [m for m in base.get("mixers", {}) if m != name]
            if len(rest) != 1:
                raise _fail(positions, ("space", path), "layout.count needs a base spec with exactly two mixers",
                            key=True)
            others[name] = rest[0]
        params.append(param)
    counts = [p for p in params if p.path.startswith("layout.count.")]
    if counts and (len(counts) > 1 or any(p.path.startswith(("layout.ratio", "layout.pattern", "layout.indices"))
                                          for p in params)):
        raise _fail(positions, ("space", counts[0].path), "layout.count sets the whole layout: search it alone "
                    "(no other layout.* path)", key=True)
    return Space(tuple(params), others=others)
