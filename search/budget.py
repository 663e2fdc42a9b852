"""Price candidates with the cost model before anything is trained, and check the space fits.

A candidate is the base spec with a point of the space laid over it and ``model.vocab_size`` set
to the largest vocabulary of the objective's tasks (so the model's logits cover every task's
tokens). It is validated by the same loader as any spec file, lowered and priced. Constraint
values follow Optuna's convention (<= 0 is feasible): ``value / limit - 1`` for every limit, then
``-1`` (valid spec) or ``1`` (the point makes no valid spec).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mirasdsl.cost import Settings, estimate
from mirasdsl.errors import SpecError, UserError
from mirasdsl.graph.lower import lower
from mirasdsl.report import nbytes, si
from mirasdsl.spec.layout import resolve_layout
from mirasdsl.spec.load import spec_from_data
from mirasdsl.spec.model import Spec

BYTE_METRICS = ("cache_bytes", "state_bytes", "kv_bytes", "activation_bytes")


@dataclass(frozen=True)
class Candidate:
    """A sampled point made into a validated, priced spec."""

    point: dict[str, Any]
    data: dict[str, Any]  # the model spec as plain data (what best.yaml holds)
    spec: Spec
    layers: tuple[str, ...]
    metrics: dict[str, float]
    violations: tuple[str, ...]  # one sentence per broken limit


def fmt(metric: str, value: float) -> str:
    """A figure for people: bytes in binary units, the rest with SI prefixes."""
    return nbytes(value) if metric in BYTE_METRICS else si(value)


def settings_for(search: Any) -> Settings:
    """Where candidates are priced: the budget's context (default: the longest task)."""
    seq = max(t.seq_len for t in search.tasks)
    budget = search.spec.budget
    return Settings(context=budget.context or seq, batch=search.spec.objective.batch_size, seq_len=seq,
                    dtype=budget.dtype)


def vocab_size(search: Any) -> int:
    """The model vocabulary: the largest of the objective's tasks."""
    return max(int(t.vocab_size) for t in search.tasks)


def candidate_data(search: Any, point: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """Base data + the point, with the task's vocabulary and an optional new name."""
    data = search.space.apply(search.base.data, point)
    data.setdefault("model", {})["vocab_size"] = vocab_size(search)
    if name:
        data["name"] = name
    return data


def price(spec: Spec, settings: Settings) -> dict[str, float]:
    """Every figure a budget or an objective may name."""
    total = estimate(lower(spec), settings).total
    return {"params": float(total.params), "train_flops_per_token": total.train_flops,
            "fwd_flops_per_token": total.fwd_flops, "cache_bytes": total.cache_bytes(1),
            "state_bytes": total.state_bytes, "kv_bytes": total.kv_bytes,
            "activation_bytes": total.activation_bytes}


def violations(metrics: dict[str, float], limits: dict[str, float]) -> tuple[str, ...]:
    return tuple(f"{m} {fmt(m, metrics[m])} > limit {fmt(m, lim)}"
                 for m, lim in limits.items() if metrics[m] > lim)


def constraints(metrics: dict[str, float] | None, limits: dict[str, float]) -> list[float]:
    """Optuna constraint values (<= 0 feasible): one per limit, then spec validity."""
    if metrics is None:
        return [1.0] * len(limits) + [1.0]
    return [metrics[m] / lim - 1.0 for m, lim in limits.items()] + [-1.0]


def make_candidate(search: Any, point: dict[str, Any], name: str | None = None) -> Candidate:
    """Validate and price a point. Raises :class:`SpecError` when it makes no valid spec."""
    data = candidate_data(search, point, name)
    spec = spec_from_data(data, source="<candidate>")
    layers = tuple(resolve_layout(spec))
    metrics = price(spec, settings_for(search))
    return Candidate(point, data, spec, layers, metrics, violations(metrics, search.spec.budget.limits()))


def spec_error_text(err: SpecError) -> str:
    """A SpecError in one line (for trial attributes and tables)."""
    parts = [f"{p.path}: {p.message}" if p.path else p.message for p in err.problems]
    return "; ".join(parts) or err.message


def check_space(search: Any, limit: int = 256) -> dict[str, Any]:
    """Price the corners and a random sample of the space before the first trial.

    Returns ``{sampled, valid, feasible, min: {metric: lowest value seen}}``. Raises
    :class:`UserError` when no sampled point fits the budget, or when none makes a valid spec.
    """
    points = search.space.sample_points(limit, seed=search.spec.seed)
    limits = search.spec.budget.limits()
    errors: dict[str, int] = {}
    lows: dict[str, float] = {}
    valid = feasible = 0
    for point in points:
        try:
            cand = make_candidate(search, point)
        except SpecError as err:
            text = spec_error_text(err)
            errors[text] = errors.get(text, 0) + 1
            continue
        valid += 1
        feasible += not cand.violations
        for m in limits:
            lows[m] = min(lows.get(m, float("inf")), cand.metrics[m])
    summary = {"sampled": len(points), "valid": valid, "feasible": feasible, "min": lows}
    if not valid:
        common = sorted(errors.items(), key=lambda kv: -kv[1])[:3]
        raise SpecError(f"no point of the space makes a valid model spec ({len(points)} sampled, corners first); "
                        "most common problems:\n  " + "\n  ".join(f"{text} ({n}×)" for text, n in common))
    if not feasible:
        broken = [f"{m}: the smallest value in the space is {fmt(m, lows[m])}, the limit is {fmt(m, lim)}"
                  for m, lim in limits.items() if lows[m] > lim]
        detail = broken or ["no single limit is out of reach, but no sampled point meets all of them at once"]
        raise UserError(f"no point of the space fits the budget ({len(points)} points priced, corners first; "
                        f"{valid} valid):\n  " + "\n  ".join(detail) +
                        "\n  raise the budget or shrink the space (smaller d_model, fewer layers, fewer attention layers)")
    return summary
