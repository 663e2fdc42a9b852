"""Plots of a study: Pareto front (or score against cost), history, score per searched value.

PNG with matplotlib (always); interactive HTML with plotly when it is installed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def _axes_label(metric: str, direction: str) -> str:
    return f"{metric} ({'higher' if direction == 'maximize' else 'lower'} is better)"


def _scatter_pair(rows: list[Any], directions: dict[str, str]) -> tuple[list[str], list[list[float]], list[Any]]:
    """The two quantities on the front plot: objectives 0 and 1, or objective 0 vs training FLOPs."""
    names = list(directions)
    ok = [r for r in rows if r.rank is not None]
    if len(names) >= 2:
        return names[:2], [[r.values[0], r.values[1]] for r in ok], ok
    ok = [r for r in ok if "train_flops_per_token" in r.costs]
    return [names[0], "train_flops_per_token"], [[r.values[0], r.costs["train_flops_per_token"]] for r in ok], ok


def _pareto_png(rows: list[Any], directions: dict[str, str], path: Path, plt: Any) -> None:
    names, pts, ok = _scatter_pair(rows, directions)
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    front = [p for p, r in zip(pts, ok) if r.pareto_rank == 0] if len(directions) > 1 else []
    ax.scatter([p[1] for p in pts], [p[0] for p in pts], c="tab:blue", label="trained within budget")
    for p, r in zip(pts, ok):
        ax.annotate(f"#{r.number}", (p[1], p[0]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if front:
        front.sort(key=lambda p: p[1])
        ax.plot([p[1] for p in front], [p[0] for p in front], "o-", c="tab:red", label="Pareto front")
    ax.set_xlabel(_axes_label(names[1], directions.get(names[1], "minimize")))
    ax.set_ylabel(_axes_label(names[0], directions[names[0]]))
    if names[1].endswith(("flops_per_token", "params", "bytes")):
        ax.set_xscale("log")
    ax.legend(loc="best", fontsize=8)
    ax.set_title("Pareto front" if len(directions) > 1 else f"{names[0]} against training cost")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _history_png(rows: list[Any], directions: dict[str, str], path: Path, plt: Any) -> None:
    name, direction = next(iter(directions.items()))
    ok = sorted((r for r in rows if r.values), key=lambda r: r.number)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.scatter([r.number for r in ok], [r.values[0] for r in ok], label="trained trials")
    best, line = None, []
    for r in ok:
        v = r.values[0]
        best = v if best is None or (v > best if direction == "maximize" else v < best) else best
        line.append(best)
    ax.step([r.number for r in ok], line, where="post", c="tab:red", label="best so far")
    others = [r for r in rows if not r.values]
    for r in others:
        ax.axvline(r.number, c="0.85", lw=0.8, zorder=0)
    ax.set_xlabel("trial (grey lines: pruned, infeasible or failed)")
    ax.set_ylabel(_axes_label(name, direction))
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _params_png(rows: list[Any], directions: dict[str, str], paths: list[str], out: Path, plt: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    name = next(iter(directions))
    ok = [r for r in rows if r.values]
    fig, axes = plt.subplots(1, len(paths), figsize=(4.0 * len(paths), 3.6), squeeze=False)
    for ax, p in zip(axes[0], paths):
        xs = [r.params.get(p) for r in ok]
        ys = [r.values[0] for r in ok]
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs):
            ax.scatter(xs, ys)
            if all(isinstance(x, int) for x in xs):
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            cats = sorted({str(x) for x in xs})
            ax.scatter([cats.index(str(x)) for x in xs], ys)
            ax.set_xticks(range(len(cats)), [c if len(c) < 24 else c[:22] + "…" for c in cats],
                          rotation=20, fontsize=7)
        ax.set_xlabel(p, fontsize=8)
        ax.set_ylabel(name)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _html(study: Any, directions: dict[str, str], out: Path) -> list[str]:
    try:
        import plotly  # noqa: F401
    except ImportError:
        return ["plotly is not installed: no HTML plots (pip install plotly)"]
    import optuna.visualization as vis

    names = list(directions)
    written = []
    try:
        fig = vis.plot_optimization_history(study, target=lambda t: t.values[0], target_name=names[0])
        fig.write_html(out / "history.html")
        written.append("history.html")
        if len(names) > 1:
            fig = vis.plot_pareto_front(study, target_names=names)
            fig.write_html(out / "pareto.html")
            written.append("pareto.html")
    except Exception as err:  # plotting must never lose a finished study
        return [f"HTML plots skipped: {type(err).__name__}: {err}"]
    return [f"interactive plots: {', '.join(str(out / w) for w in written)}"]


def write_plots(rows: list[Any], out: Path, directions: dict[str, str], paths: list[str], study: Any) -> list[str]:
    """Write pareto.png, history.png and params.png (and HTML where plotly is present)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(r.values for r in rows):
        return ["no trained trial yet: no plots"]
    _pareto_png(rows, directions, out / "pareto.png", plt)
    _history_png(rows, directions, out / "history.png", plt)
    _params_png(rows, directions, paths, out / "params.png", plt)
    notes = [f"plots: {out / 'pareto.png'}, {out / 'history.png'}, {out / 'params.png'}"]
    return notes + _html(study, directions, out)
