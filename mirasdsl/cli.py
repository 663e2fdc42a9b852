"""The ``miras`` command line: compile, validate, schema, list (and run, search)."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from typing import Callable, Sequence

from rich.console import Console
from rich.markup import escape

from mirasdsl.errors import UserError

COMMANDS: dict[str, Callable[[argparse.Namespace, Console], int]] = {}


def command(name: str) -> Callable:
    def register(fn: Callable[[argparse.Namespace, Console], int]) -> Callable:
        COMMANDS[name] = fn
        return fn
    return register


def positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _compile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="model spec file (YAML)")
    p.add_argument("--context", type=positive_int, default=4096,
                   help="sequence length at which FLOPs per token and the KV cache are priced (default 4096)")
    p.add_argument("--batch", type=positive_int, default=1, help="batch of the training step priced for activations")
    p.add_argument("--seq-len", type=positive_int, default=None,
                   help="sequence length of that training step (default: --context)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16",
                   help="activation and KV-cache dtype (state is fp32)")
    p.add_argument("--device", default="cpu", help="device the kernels are chosen for: cpu or cuda (default cpu)")
    p.add_argument("--explain", action="store_true", help="print every lowering decision and why")
    p.add_argument("--emit", action="append", default=[], metavar="FILE",
                   help="write the graph: FILE.json or FILE.dot (repeatable)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="miras", description="Place sequence models on the Miras axes, "
                                     "price them, build them and search over them.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("compile", help="validate, lower, price and explain a model spec")
    _compile_args(p)
    p = sub.add_parser("validate", help="check one or more spec files; exit 2 on the first invalid one")
    p.add_argument("specs", nargs="+", help="model spec files (YAML)")
    p = sub.add_parser("schema", help="print the JSON Schema of model spec files")
    p.add_argument("--output", "-o", help="write to this file instead of stdout")
    p = sub.add_parser("list", help="list presets and kernel families")
    p.add_argument("--json", action="store_true", help="print as JSON")
    _register_optional(sub)
    return parser


def _register_optional(sub: argparse._SubParsersAction) -> None:
    """Commands that live in heavier modules (torch, optuna) register themselves if present."""
    for module in ("mirasdsl.run", "mirasdsl.search.command"):
        if importlib.util.find_spec(module) is not None:  # register() must stay light: no torch import
            importlib.import_module(module).register(sub, command)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    try:
        return COMMANDS[args.command](args, console)
    except UserError as err:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(err.render())}", highlight=False)
        return err.exit_code
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        return 130
    except BrokenPipeError:  # the reader went away (`miras ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:  # stdout or a file could not be written (disk full, closed terminal)
        Console(stderr=True).print(f"error: cannot write output ({err.strerror or err})", highlight=False, markup=False)
        return 2


from mirasdsl import commands  # noqa: E402,F401  (registers compile/validate/schema/list)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
