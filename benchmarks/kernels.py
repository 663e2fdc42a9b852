"""Time every kernel family of ours beside its peer, in one run on one GPU.

    python benchmarks/kernels.py --out "$OUT"                 # everything
    python benchmarks/kernels.py --shapes S --families gla,delta --no-e2e

Families (ours | peer): gated linear attention with a scalar gate (| fla chunk_simple_gla) and
with a per-channel gate (| fla chunk_gla); the delta rule plain (| fla chunk_delta_rule),
scalar-gated (| fla chunk_gated_delta_rule) and per-channel-gated (| fla chunk_kda); softmax
attention causal (| PyTorch SDPA, FlashAttention), sliding window and ALiBi (| SDPA with a
mask / bias); deep memory, depth-2 MLP, chunk 64 and 16, with titans-pytorch's update (steps of a chunk, the
step-parallel form) and with the chunk-wise update (| titans-pytorch NeuralMemory); and an
end-to-end model from a spec. Shapes S (B=8, T=4096, H=16, D=128) and L (B=2, T=16384). A peer
or a family of ours that is missing, refuses, fails or runs out of memory is reported as such.
Writes ``kernels.json`` and ``kernels.md`` under ``--out`` after every case and prints the table.
A CUDA error that leaves the process's context unusable (an illegal memory access: what some
Hopper builds of Triton 3.4-3.7 produced for fla) stops the run there: the cases not yet run are
listed as such and their families written to ``rerun_families.txt`` (the crashing family left
out), which ``run_on_device.sh`` reruns in a new process.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import cases
import report
from cases import MEMORY_SHAPE, SHAPES, SWA_WINDOW, Shape
from end_to_end import run_end_to_end
from harness import Prepared, Row, Timer, copy_bandwidth_tb_s, matmul_tflops, measure
from triton_cache import HitCounter


@dataclass(frozen=True)
class Pair:
    """One family: our implementation and the peer it is compared with."""

    family: str
    ours: Callable[[Shape], Prepared]
    peer_name: str
    peer: Callable[[Shape], Prepared]
    shapes: tuple[Shape, ...] = ()  # empty: the --shapes chosen
    note: str = ""


def memory_pair(chunk: int, steps: bool = False) -> Pair:
    """Deep memory at titans-pytorch's measured size, one chunk size; ``steps``: ours computes
    titans-pytorch's own update (``step=chunk``, reference at the call's start), else the
    chunk-wise update of the Titans paper (a different, sequential recurrence)."""
    what = "same update as titans-pytorch (step form)" if steps else "chunk-wise GD (gradients at each chunk's start)"
    return Pair(f"deep_memory_{'steps_' if steps else ''}c{chunk}",
                lambda s: cases.ours_deep_memory(s, chunk, steps),
                "titans_pytorch.NeuralMemory", lambda s: cases.titans_memory(s, chunk),
                (MEMORY_SHAPE,), f"depth-2 MLP, chunk {chunk}, {what}; titans includes projections")


def memory_block_pair(chunk: int) -> Pair:
    """Module against module: our deep-memory mixer built from the ``titans-pytorch`` preset
    (projections, gates, output gate around the step form) beside titans-pytorch's NeuralMemory."""
    return Pair(f"deep_memory_block_steps_c{chunk}", lambda s: cases.ours_memory_block(s, chunk),
                "titans_pytorch.NeuralMemory", lambda s: cases.titans_memory(s, chunk),
                (MEMORY_SHAPE,), f"whole mixers, steps of {chunk}: projections and gates on both sides")


PAIRS = (
    Pair("simple_gla", lambda s: cases.ours_gla(s, "simple_gla"), "fla.chunk_simple_gla",
         lambda s: cases.fla_op("simple_gla", s, "simple_gla"), note="scalar gate"),
    Pair("gla", lambda s: cases.ours_gla(s, "gla"), "fla.chunk_gla",
         lambda s: cases.fla_op("gla", s, "gla"), note="per-channel gate"),
    Pair("delta", lambda s: cases.ours_delta(s, "delta"), "fla.chunk_delta_rule",
         lambda s: cases.fla_op("delta", s, "delta")),
    Pair("gated_delta", lambda s: cases.ours_delta(s, "gated_delta"),
         "fla.chunk_gated_delta_rule", lambda s: cases.fla_op("gated_delta", s, "gated_delta"),
         note="scalar gate (Gated DeltaNet)"),
    Pair("kda", lambda s: cases.ours_delta(s, "kda"), "fla.chunk_kda",
         lambda s: cases.fla_op("kda", s, "kda"), note="per-channel gate (KDA)"),
    Pair("attention", cases.ours_attention, "torch.sdpa(flash)", cases.torch_sdpa,
         note="causal"),
    Pair("attention_swa", lambda s: cases.ours_attention(s, window=SWA_WINDOW),
         "torch.sdpa+mask", lambda s: cases.torch_sdpa(s, window=SWA_WINDOW),
         note=f"window {SWA_WINDOW}"),
    Pair("attention_alibi", lambda s: cases.ours_attention(s, alibi=True), "torch.sdpa+bias",
         lambda s: cases.torch_sdpa(s, alibi=True), note="ALiBi"),
    memory_pair(64, steps=True),
    memory_block_pair(64),
    memory_pair(16, steps=True),
    memory_pair(64),
    memory_pair(16),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/mirasdsl_bench"),
                   help="results folder (default $OUT)")
    p.add_argument("--shapes", default="S,L", help="comma list of S, L")
    p.add_argument("--families", default="", help="comma list (substring match); empty: all")
    p.add_argument("--impls", default="ours,peer", help="ours, peer or both")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end models")
    p.add_argument("--e2e-seq-len", type=int, default=16384)
    p.add_argument("--budget-s", type=float, default=0.0,
                   help="stop starting new cases after this many seconds (0: no limit)")
    p.add_argument("--warmup-ms", type=int, default=100)
    p.add_argument("--rep-ms", type=int, default=400)
    p.add_argument("--dry-run", action="store_true",
                   help="CPU, tiny shapes, perf_counter: checks the plumbing, measures nothing")
    return p.parse_args(argv)


def selected(pair: Pair, families: str) -> bool:
    """``families``: comma list of name fragments, or ``=name`` for that family alone."""
    wanted = [f for f in families.split(",") if f]
    return not wanted or any(pair.family == f[1:] if f.startswith("=") else f in pair.family for f in wanted)


FATAL_CUDA = re.compile(r"illegal memory access|unspecified launch failure|device-side assert|"
                        r"misaligned address|illegal instruction", re.IGNORECASE)
LOST = "not run: the CUDA context was lost at "


def context_lost(row: Row) -> bool:
    """The case died of a CUDA error after which every later CUDA call in this process fails."""
    return bool(FATAL_CUDA.search(row.message))


def rerun_list(rows: list[Row], crashed: Row, e2e_pending: bool) -> str:
    """``--families`` for a new process: the families with cases not run, exactly (``=name``),
    without the one that crashed; ``=end_to_end`` when the end-to-end step is still to run."""
    names = [r.family for r in rows if r.message.startswith(LOST) and r.family != crashed.family]
    names = list(dict.fromkeys(names)) + (["end_to_end"] if e2e_pending else [])
    return ",".join("=" + n for n in names)


def plan(args: argparse.Namespace) -> list[tuple[Row, Callable[[], Prepared]]]:
    """Every (row, builder) to run, ours before its peer, in family then shape order."""
    table = cases.TINY if args.dry_run else SHAPES
    shapes = [table[n] for n in args.shapes.split(",") if n]
    impls = args.impls.split(",")
    todo = []
    for pair in PAIRS:
        if not selected(pair, args.families):
            continue
        own = tuple(cases.TINY_MEMORY if args.dry_run else s for s in pair.shapes)
        for s in own or shapes:
            for impl, label, make in (("ours", "ours", pair.ours),
                                      ("peer", pair.peer_name, pair.peer)):
                if impl in impls:
                    row = Row(pair.family, label, s.name, s.dims(), note=pair.note)
                    todo.append((row, lambda make=make, s=s: make(s)))
    return todo


def print_table(rows: list[Row]) -> None:
    """The markdown table on stdout, last, so it ends up in the tail of a log."""
    print("\n" + "\n".join(report.table(rows)), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("benchmarks/kernels.py needs a CUDA device (or --dry-run)", file=sys.stderr)
        return 2
    cases.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = True
    out, started = Path(args.out), time.time()
    timer = Timer(args.warmup_ms, args.rep_ms, device=device)
    env = report.environment()
    env["mode"] = ("DRY RUN on the CPU at tiny shapes, timed with perf_counter: "
                   "NOT a measurement") if args.dry_run else "measurement"
    print(env, flush=True)
    big = not args.dry_run
    ceilings = {"copy_TB_s": copy_bandwidth_tb_s(timer, 1 << 30 if big else 1 << 24),
                "bf16_matmul_TFLOP_s": matmul_tflops(timer, 8192 if big else 256)}
    print(ceilings, flush=True)
    compiles = HitCounter()
    compiles.install()  # a carried .triton_cache (benchmarks/precompile.py) shows here as hits
    rows: list[Row] = []
    crashed: Row | None = None
    for row, make in plan(args):
        if crashed is not None:
            row.status, row.message = "skipped", LOST + f"{crashed.family} {crashed.shape} ({crashed.impl})"
        elif args.budget_s and time.time() - started > args.budget_s:
            row.status, row.message = "skipped", f"time budget of {args.budget_s:.0f} s spent"
        else:
            measure(row, make, timer, ceilings["copy_TB_s"])
            crashed = row if context_lost(row) else None
        rows.append(row)
        print(row.to_json(), flush=True)
        report.write(out, rows, env, ceilings)
    wanted = not args.families or "end_to_end" in args.families
    if crashed is not None:
        again = rerun_list(rows, crashed, not args.no_e2e and wanted)
        (out / "rerun_families.txt").write_text(again)
        print(f"CUDA context lost at {crashed.family} {crashed.shape} ({crashed.impl}): the rest did not run; "
              f"families for a new process: {again or 'none'}", flush=True)
    elif not args.no_e2e and wanted:
        if args.budget_s and time.time() - started > args.budget_s:
            print("end-to-end skipped: time budget spent", flush=True)
        else:
            rows += run_end_to_end(timer, args.e2e_seq_len if big else 32)
            report.write(out, rows, env, ceilings)
    print_table(rows)
    print(compiles.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
