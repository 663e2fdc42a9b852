"""The light commands: compile, validate, schema, list (no torch import on these paths)."""
from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from mirasdsl.cli import command
from mirasdsl.cost import Settings, estimate
from mirasdsl.errors import UserError
from mirasdsl.graph.export import explain, write_graph
from mirasdsl.graph.lower import lower
from mirasdsl.kernels.dispatch import BackendError, resolve
from mirasdsl.report import print_compile, report_json, tuple_text
from mirasdsl.spec import PRESETS, load_spec, resolve_layout, spec_from_data
from mirasdsl.spec.families import FAMILY_DOCS, lower_tuple


def kernel_backend(device: str) -> str:
    """The backend the linear families would use on ``device`` (``$MIRAS_KERNELS`` honoured)."""
    if device.split(":")[0] not in ("cpu", "cuda", "mps", "xpu"):
        raise UserError(f"--device: unknown device {device!r}; allowed: cpu, cuda, cuda:N")
    try:
        return resolve(None, device)
    except BackendError as err:
        raise UserError(f"kernel choice: {err}") from None


def _check_emit(paths: list[str]) -> None:
    for path in paths:
        if not path.endswith((".json", ".dot", ".gv")):
            raise UserError(f"--emit {path}: unknown format; allowed suffixes: .json, .dot, .gv")


@command("compile")
def compile_cmd(args: argparse.Namespace, console: Console) -> int:
    _check_emit(args.emit)
    backend = kernel_backend(args.device)
    spec = load_spec(args.spec)
    graph = lower(spec)
    layers = resolve_layout(spec)
    settings = Settings(args.context, args.batch, args.seq_len or args.context, args.dtype)
    report = estimate(graph, settings)
    for path in args.emit:
        try:
            write_graph(graph, path)
        except OSError as err:
            raise UserError(f"--emit {path}: cannot write ({err.strerror})") from None
    if args.json:
        sys.stdout.write(json.dumps(report_json(spec, layers, report, backend), indent=2, ensure_ascii=False) + "\n")
        return 0
    print_compile(console, spec, layers, report, backend)
    if args.explain:
        console.print("\n".join(explain(graph, layers, backend)), highlight=False, markup=False)
    for path in args.emit:
        console.print(f"wrote {path}", highlight=False, markup=False)
    return 0


@command("validate")
def validate_cmd(args: argparse.Namespace, console: Console) -> int:
    for path in args.specs:
        spec = load_spec(path)
        lower(spec)
        console.print(f"ok: {path} ({spec.name}, {spec.model.n_layers} layers)", highlight=False, markup=False)
    return 0


@command("schema")
def schema_cmd(args: argparse.Namespace, console: Console) -> int:
    from mirasdsl.schema import spec_schema

    text = json.dumps(spec_schema(), indent=2, ensure_ascii=False) + "\n"
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as err:
            raise UserError(f"--output {args.output}: cannot write ({err.strerror})") from None
    else:
        sys.stdout.write(text)
    return 0


def _preset_rows() -> list[dict[str, str]]:
    from mirasdsl.spec.model import ParallelMixer, TupleMixer

    minimal = {"miras": 1, "name": "x", "model": {"vocab_size": 16, "d_model": 64, "n_layers": 1, "heads": 1}}
    rows = []
    for p in PRESETS.values():
        spec = spec_from_data({**minimal, "mixers": {"m": {"preset": p.name}}})
        mixer = spec.mixers["m"]
        if isinstance(mixer, ParallelMixer):
            tup = f" {mixer.combine} ".join(tuple_text(b) for b in mixer.branches.values())
            fam = " ∥ ".join(lower_tuple(b).family for b in mixer.branches.values())
        else:
            assert isinstance(mixer, TupleMixer)
            tup, fam = tuple_text(mixer), lower_tuple(mixer).family
        rows.append({"preset": p.name, "tuple": tup, "family": fam, "summary": p.summary, "source": p.source})
    return rows


@command("list")
def list_cmd(args: argparse.Namespace, console: Console) -> int:
    rows = _preset_rows()
    if args.json:
        sys.stdout.write(json.dumps({"presets": rows, "families": FAMILY_DOCS}, indent=2, ensure_ascii=False) + "\n")
        return 0
    t = Table(title="presets (use as {preset: NAME} in a mixer; fields beside it override)", title_justify="left")
    for col in ("preset", "memory × bias × retention × update", "kernel family", "summary", "source"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(r["preset"], r["tuple"], r["family"], r["summary"], r["source"])
    console.print(t)
    f = Table(title="kernel families", title_justify="left")
    f.add_column("family")
    f.add_column("computes", overflow="fold")
    for name, doc in FAMILY_DOCS.items():
        f.add_row(name, doc)
    console.print(f)
    return 0
