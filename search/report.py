"""What a study found: the ranked table, the best spec as YAML, Pareto and history plots.

Only trials that trained to the end and met the budget are ranked (single objective: by value;
several: by Pareto rank, then by the first objective). Pruned, stopped, infeasible and failed
trials are listed after them with their reason.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from mirasdsl.search.budget import fmt
from mirasdsl.search.storage import RETRY_OF
from mirasdsl.search.study import STATUS, is_retry

_ORDER = {"ok": 0, "pruned": 1, "stopped": 1, "infeasible": 2, "failed": 3, "worker lost": 3, "interrupted": 4}


@dataclass
class Row:
    """One slot's final result."""

    number: int
    status: str
    params: dict[str, Any]
    values: list[float] | None
    costs: dict[str, float]
    layout: str = ""
    tuples: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    spec: dict[str, Any] | None = None
    trained: dict[str, float] = field(default_factory=dict)
    pareto_rank: int | None = None
    rank: int | None = None


def final_trials(study: Any) -> list[Any]:
    """Finished trials that are the last attempt at their slot (no surplus, no superseded)."""
    trials = study.get_trials(deepcopy=False)
    superseded = {t.user_attrs[RETRY_OF] for t in trials if is_retry(t)}
    return [t for t in trials if t.state.is_finished() and t.number not in superseded
            and t.user_attrs.get(STATUS) != "surplus"]


def _status(t: Any) -> str:
    if STATUS in t.user_attrs:
        return str(t.user_attrs[STATUS])
    return "worker lost" if t.state.name == "FAIL" else t.state.name.lower()


def rows_of(study: Any) -> list[Row]:
    rows = []
    for t in final_trials(study):
        status = _status(t)
        reason = str(t.user_attrs.get("reason", ""))
        if status == "worker lost":
            reason = "the worker stopped sending heartbeats and retries were used up"
        rows.append(Row(t.number, status, dict(t.params), list(t.values) if status == "ok" else None,
                        dict(t.user_attrs.get("costs", {})), str(t.user_attrs.get("layout", "")),
                        dict(t.user_attrs.get("tuples", {})), reason, t.user_attrs.get("spec"),
                        dict(t.user_attrs.get("trained", {}))))
    return rows


def _dominates(a: list[float], b: list[float], signs: list[float]) -> bool:
    at_least = all(s * x >= s * y for x, y, s in zip(a, b, signs))
    return at_least and any(s * x > s * y for x, y, s in zip(a, b, signs))


def rank_rows(rows: list[Row], directions: dict[str, str]) -> list[Row]:
    """Give ranked rows (status ok) their Pareto rank and overall rank; sort every row."""
    signs = [1.0 if d == "maximize" else -1.0 for d in directions.values()]
    ok = [r for r in rows if r.status == "ok" and r.values is not None]
    left, level = list(ok), 0
    while left:
        front = [r for r in left if not any(_dominates(o.values, r.values, signs) for o in left if o is not r)]
        for r in front:
            r.pareto_rank = level
        left = [r for r in left if r not in front]
        level += 1
    ok.sort(key=lambda r: (r.pareto_rank, *[-s * v for s, v in zip(signs, r.values)], r.number))
    for i, r in enumerate(ok):
        r.rank = i + 1
    rest = sorted((r for r in rows if r not in ok), key=lambda r: (_ORDER.get(r.status, 5), r.number))
    return ok + rest


def _point_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.', 1)[-1] if k.startswith('layout.') else k}={v}" for k, v in params.items())


def table(rows: list[Row], directions: dict[str, str], limits: dict[str, float], title: str) -> Table:
    """The ranked table: rank, trial, layout, tuples, priced figures, objective values, status."""
    t = Table(title=title, title_justify="left")
    for col in ("rank", "trial", "layout", "searched values", "tuples"):
        t.add_column(col, overflow="fold")
    figures = [m for m in dict.fromkeys(["params", "train_flops_per_token", *limits]) if m not in directions]
    for m in figures:
        t.add_column(m.replace("_per_token", "/tok"), justify="right")
    for m, d in directions.items():
        t.add_column(f"{m} ({'max' if d == 'maximize' else 'min'})", justify="right")
    t.add_column("status", overflow="fold")
    for r in rows:
        cells = [str(r.rank or "-"), str(r.number), r.layout, _point_text(r.params),
                 "; ".join(f"{k}: {v}" for k, v in r.tuples.items())]
        cells += [fmt(m, r.costs[m]) if m in r.costs else "-" for m in figures]
        cells += [f"{v:.4g}" if m.split(".")[0] in ("accuracy", "loss") else fmt(m, v)
                  for m, v in zip(directions, r.values)] if r.values else ["-"] * len(directions)
        front = " (Pareto)" if r.pareto_rank == 0 and len(directions) > 1 else ""
        cells.append(r.status + front + (f": {r.reason}" if r.reason and r.status != "ok" else ""))
        t.add_row(*cells)
    return t


def write_spec(row: Row, path: Path, header: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(row.spec, sort_keys=False, default_flow_style=None, width=100)
    path.write_text(f"# {header}\n{text}", encoding="utf-8")


def write_outputs(rows: list[Row], out: Path, directions: dict[str, str], space_paths: list[str],
                  study: Any, console: Console) -> list[str]:
    """best.yaml, pareto/*.yaml, results.json and the plots under ``out``. Returns notes."""
    out.mkdir(parents=True, exist_ok=True)
    notes = []
    ranked = [r for r in rows if r.rank is not None]
    (out / "results.json").write_text(json.dumps([{
        "rank": r.rank, "trial": r.number, "status": r.status, "params": r.params, "layout": r.layout,
        "tuples": r.tuples, "costs": r.costs, "trained": r.trained, "reason": r.reason,
        "values": dict(zip(directions, r.values)) if r.values else None, "pareto_rank": r.pareto_rank}
        for r in rows], indent=2), encoding="utf-8")
    if ranked:
        best = ranked[0]
        write_spec(best, out / "best.yaml", f"best of study {study.study_name}: trial {best.number}, "
                   + ", ".join(f"{m} = {v:.6g}" for m, v in zip(directions, best.values)))
        notes.append(f"best spec: {out / 'best.yaml'} (trial {best.number}); check it with `miras compile {out / 'best.yaml'}`")
        if len(directions) > 1:
            for r in ranked:
                if r.pareto_rank == 0:
                    write_spec(r, out / "pareto" / f"trial-{r.number}.yaml", f"Pareto-optimal trial {r.number}")
            notes.append(f"Pareto-optimal specs: {out / 'pareto'}/")
    else:
        notes.append("no trial trained to the end within the budget: no best spec written")
    from mirasdsl.search.plots import write_plots

    notes += write_plots(rows, out, directions, space_paths, study)
    return notes
