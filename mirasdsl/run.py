"""``miras run``: build a spec's model and time forward + backward on random tokens.

Registered by the CLI; importing this module stays light (torch is imported by the handler).
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

from rich.console import Console
from rich.table import Table

from mirasdsl.errors import UserError


def register(sub: argparse._SubParsersAction, command: Callable) -> None:
    from mirasdsl.cli import positive_int

    p = sub.add_parser("run", help="build the model and time forward + backward on random tokens")
    p.add_argument("spec", help="model spec file (YAML)")
    p.add_argument("--batch", type=positive_int, default=2, help="batch size (default 2)")
    p.add_argument("--seq-len", type=positive_int, default=256, help="sequence length (default 256)")
    p.add_argument("--steps", type=positive_int, default=3, help="timed steps after one warm-up (default 3)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="autocast dtype (default fp32)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and tokens")
    command("run")(run_cmd)


def _device(name: str):
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device: unknown device {name!r}; allowed: cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device: {device.type!r} is not supported; allowed: cpu, cuda, cuda:N")
    return device


def run_cmd(args: argparse.Namespace, console: Console) -> int:
    import torch

    from mirasdsl.blocks import build_model
    from mirasdsl.cost import Settings, estimate
    from mirasdsl.report import nbytes, si
    from mirasdsl.spec import load_spec

    from mirasdsl.kernels.dispatch import BackendError, resolve

    spec = load_spec(args.spec)
    device = _device(args.device)
    try:
        resolve(None, device)
    except BackendError as err:
        raise UserError(f"kernel choice: {err}") from None
    torch.manual_seed(args.seed)
    model = build_model(spec).to(device)
    tokens = torch.randint(0, spec.model.vocab_size, (args.batch, args.seq_len), device=device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32

    def step() -> float:
        with torch.autocast(device.type, dtype=dtype, enabled=args.dtype == "bf16"):
            logits = model(tokens)
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens.flatten())
        loss.backward()
        model.zero_grad(set_to_none=True)
        return float(loss.detach())

    with console.status(f"building and warming up {spec.name} on {device} ..."):
        loss = step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    med = sorted(times)[len(times) // 2]
    toks = args.batch * args.seq_len
    est = estimate(spec, Settings(context=args.seq_len, batch=args.batch, seq_len=args.seq_len,
                                  dtype="bf16" if args.dtype == "bf16" else "fp32")).total
    t = Table(title=f"{spec.name}: forward + backward, batch {args.batch} × {args.seq_len}, {device}, {args.dtype}",
              title_justify="left")
    for col in ("params", "loss", "step (median)", "tokens/s", "train FLOP/s (est.)", "peak memory"):
        t.add_column(col, justify="right")
    peak = nbytes(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else _rss()
    t.add_row(si(sum(p.numel() for p in model.parameters())), f"{loss:.4f}", f"{med * 1e3:.1f} ms",
              si(toks / med), si(est.train_flops * toks / med), peak)
    console.print(t)
    return 0


def _rss() -> str:
    """Peak resident memory of this process (CPU runs)."""
    import resource

    from mirasdsl.report import nbytes

    return nbytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) + " (process RSS)"
