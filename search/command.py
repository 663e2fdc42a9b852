"""``miras search SEARCH.yaml``: run (or join, or resume) a budgeted architecture search.

Importing this module and :func:`register` stay light (no torch, no optuna): ``miras compile``
must start fast. The handler imports the heavy parts.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from mirasdsl.errors import UserError


def register(sub: argparse._SubParsersAction, command: Callable) -> None:
    from mirasdsl.cli import positive_int

    p = sub.add_parser("search", help="budgeted architecture search over a space of specs (Optuna)",
                       description="Run a search spec: price every candidate, train those within the budget "
                       "on the proxy tasks, and write the ranked table, best spec and plots. Rerun to resume; "
                       "run it on several machines with one --storage postgresql://... to share the study.")
    p.add_argument("spec", help="search spec file (YAML, starting with 'miras-search: 1')")
    p.add_argument("--storage", help="study storage URL (default: the spec's, else sqlite:///studies/STUDY.db)")
    p.add_argument("--study-name", help="study name in the storage (default: the spec's, else the file name)")
    p.add_argument("--trials", type=positive_int, help="trials to finish (default: the spec's)")
    p.add_argument("--timeout", help="stop starting trials after this long: seconds or e.g. 15m (default: the spec's)")
    p.add_argument("--out", help="folder for best.yaml, plots and results.json (default: studies/STUDY)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads for training")
    p.add_argument("--report", action="store_true", help="run nothing: report what the storage holds")
    command("search")(search_cmd)


class UI:
    """Live progress: a rich table redrawn in place on a terminal, one line per trial elsewhere."""

    def __init__(self, console: Console, directions: dict[str, str]) -> None:
        self.console, self.directions = console, directions
        self.done: list[tuple[int, str, str, str]] = []
        self.current, self.line, self.live = "", "", None
        if console.is_terminal:
            from rich.live import Live

            self.live = Live(self._render(), console=console, refresh_per_second=2, transient=False)

    def __enter__(self) -> "UI":
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.stop()

    def _render(self) -> Any:
        t = Table(title="trials (latest last)", title_justify="left")
        for col in ("trial", "status", "values", "layout / reason"):
            t.add_column(col, overflow="fold")
        for row in self.done[-12:]:
            t.add_row(*row)
        return Group(t, Text(self.line), Text(self.current))

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._render())

    def status(self, acc: Any, wanted: int) -> None:
        self.line = f"finished {acc.done}/{wanted} trials; {acc.pending} running or queued"
        self._refresh()

    def started(self, trial: Any) -> None:
        self.current = f"trial {trial.number}: pricing..."
        self._refresh()

    def progress(self, task: int, step: int, scores: dict[str, float]) -> None:
        self.current = f"  training: task {task}, step {step}, held-out accuracy {scores['accuracy']:.3f}, loss {scores['loss']:.3f}"
        self._refresh()

    def finished(self, trial: Any, status: str) -> None:
        from mirasdsl.search.budget import fmt

        values = ", ".join(f"{m}={v:.4g}" if m.split(".")[0] in ("accuracy", "loss") else f"{m}={fmt(m, v)}"
                           for m, v in zip(self.directions, trial.values or [])) if status == "ok" else ""
        detail = trial.user_attrs.get("layout", "") if status == "ok" else trial.user_attrs.get("reason", "")
        row = (str(trial.number), status, values, str(detail))
        self.done.append(row)
        self.current = ""
        if self.live is None:
            self.console.print(f"trial {row[0]}: {row[1]} {row[2]} {row[3]}".rstrip(), highlight=False, markup=False)
        self._refresh()


def _device(name: str | None) -> str:
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.split(":")[0] not in ("cpu", "cuda"):
        raise UserError(f"--device: unknown device {name!r}; allowed: cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available on this machine; use --device cpu")
    return name


def search_cmd(args: argparse.Namespace, console: Console) -> int:
    from mirasdsl.search.spec import _TIME, load_search_spec, parse_amount

    search = load_search_spec(args.spec)
    spec = search.spec
    study_name = args.study_name or search.study_name
    try:
        timeout = parse_amount(args.timeout, _TIME) if args.timeout else spec.timeout
    except ValueError as err:
        raise UserError(f"--timeout: {err}") from None
    wanted = args.trials or spec.trials
    out = Path(args.out or Path("studies") / study_name)
    device = _device(args.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return _run(search, args, console, study_name, wanted, timeout, out, device)


def _run(search: Any, args: argparse.Namespace, console: Console, study_name: str, wanted: int,
         timeout: float | None, out: Path, device: str) -> int:
    from mirasdsl.search import budget as bud
    from mirasdsl.search.report import rank_rows, rows_of, table, write_outputs
    from mirasdsl.search.storage import default_url, _redact
    from mirasdsl.search.study import open_study, work

    spec = search.spec
    url = args.storage or spec.storage or default_url(study_name)
    if not args.report:
        summary = bud.check_space(search)
        n = len(search.space.params)
        console.print(f"space: {n} parameter{'' if n == 1 else 's'}; {summary['sampled']} points priced before "
                      f"training: {summary['valid']} valid specs, {summary['feasible']} within the budget",
                      highlight=False, markup=False)
    study = open_study(search, url, study_name, create=not args.report)
    doing = "report only" if args.report else f"finishing {wanted} on {device}"
    console.print(f"study {study_name!r} in {_redact(url)}: {len(study.trials)} trials stored; {doing}",
                  highlight=False, markup=False)
    if not args.report:
        with UI(console, spec.objective.directions) as ui:
            work(study, search, wanted=wanted, timeout=timeout, device=device, ui=ui)
    rows = rank_rows(rows_of(study), spec.objective.directions)
    console.print(table(rows, spec.objective.directions, spec.budget.limits(),
                        f"study {study_name}: ranked (trained within budget first)"))
    notes = write_outputs(rows, out, spec.objective.directions, [p.path for p in search.space.params], study, console)
    for note in notes:
        console.print(note, highlight=False, markup=False)
    console.print(f"dashboard: optuna-dashboard {url}   (pip install optuna-dashboard)", highlight=False, markup=False)
    return 0
