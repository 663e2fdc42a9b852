"""Count the kernel launches of one deep-memory forward + backward, per chunk, on the CPU.

The H100 profile showed the deep-memory chunk loop launch-bound (about 20,000 launches per
fwd+bwd at the Titans shape). This counts, without a GPU, what each chunk launches: every
non-view ATen op (each one a kernel on the GPU) and every Triton kernel (replaced by a recorder,
so nothing is computed and values are garbage: only the counts mean anything). Needs
TRITON_INTERPRET unset.

    python benchmarks/count_launches.py [--chunks 8] [--chunk 16] [--backend triton]
"""
from __future__ import annotations

import argparse
import time
from collections import Counter
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode


_NO_KERNEL = {"detach", "alias", "_unsafe_view", "_reshape_alias", "lift_fresh"}  # metadata only
_ALLOC = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}  # no kernel


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops that launch a kernel (not views, not bare allocations) and,
    separately, the allocations, dispatched while active (on this thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.allocs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name = func.overloadpacket.__name__
        if name in _ALLOC:
            self.allocs += 1
        elif not func.is_view and name not in _NO_KERNEL:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def deep_memory_call(chunks: int, chunk: int, backend: str, depth: int = 2) -> Callable[[], torch.Tensor]:
    """Titans-like memory (``cpu_deep_memory.titans_like``) at tiny sizes; depth 1: a linear
    memory with the same LayerNorm, residual, bias, momentum and decay (TTT-linear's form)."""
    import dataclasses

    from cpu_deep_memory import call, titans_like  # this folder

    from mirasdsl.kernels.deep_memory.chunk import triton_deep_memory
    from mirasdsl.kernels.deep_memory.chunk_torch import chunk_deep_memory

    # called directly: the dispatcher sends "triton" to CUDA or the interpreter only
    cfg, x = titans_like(1, chunks * chunk, 2, 16, chunk)
    if depth == 1:
        cfg = dataclasses.replace(cfg, depth=1, hidden=None)
        x["w1"] = (torch.randn(2, 16, 16) * 0.25).requires_grad_(True)  # [H, D, D]
        del x["w2"]
    return call(triton_deep_memory if backend == "triton" else chunk_deep_memory, cfg, x)


def _name(fn) -> str:  # noqa: ANN001
    """A Triton kernel's name (autotuned kernels wrap the jit function)."""
    return getattr(fn, "fn", fn).__name__


def count(chunks: int, chunk: int, backend: str, depth: int = 2) -> dict[str, Counter]:
    """ATen ops and Triton launches of the forward and of the backward."""
    from mirasdsl.kernels.compile_check import recording
    from mirasdsl.kernels.deep_memory import chunk as dm_chunk
    from mirasdsl.kernels.deep_memory import step as dm_step

    targets = [(m, n) for m in (dm_chunk, dm_step) for n in dir(m) if n.endswith("_kernel")]
    fn = deep_memory_call(chunks, chunk, backend, depth)
    out: dict[str, Counter] = {}
    with recording(targets) as log:
        with OpCounter() as fwd:
            o = fn()
        n_fwd = len(log)
        with OpCounter() as bwd:
            o.backward(torch.ones_like(o))
        n_all = len(log)
        host = []
        for _ in range(5):  # host time of fwd + bwd with the Triton kernels not run
            start = time.perf_counter()
            fn().backward(torch.ones_like(o))
            host.append(time.perf_counter() - start)
    out["aten fwd"], out["aten bwd"] = fwd.ops, bwd.ops
    out["allocs"] = Counter(fwd=fwd.allocs, bwd=bwd.allocs)
    out["host us"] = Counter(best=round(min(host) * 1e6))
    out["triton fwd"] = Counter(_name(launch.fn) for launch in log[:n_fwd])
    out["triton bwd"] = Counter(_name(launch.fn) for launch in log[n_fwd:n_all])
    return out


def per_chunk(backend: str, chunk: int, chunks: int, depth: int = 2
              ) -> tuple[dict[str, float], dict[str, Counter]]:
    """Launches per chunk: the difference between ``chunks`` and ``chunks // 2`` chunks, so that
    the per-call set-up (projections, coefficient tables, the read-out) cancels. Also returns
    the counts of the whole call at ``chunks`` chunks."""
    big, small = count(chunks, chunk, backend, depth), count(chunks // 2, chunk, backend, depth)
    span = chunks - chunks // 2
    return {key: (sum(big[key].values()) - sum(small[key].values())) / span for key in big}, big


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--backend", default="triton", choices=["triton", "chunk"])
    p.add_argument("--depth", type=int, default=2, choices=[1, 2])
    p.add_argument("--top", type=int, default=12, help="list the most frequent ATen ops")
    a = p.parse_args()
    rates, full = per_chunk(a.backend, a.chunk, a.chunks, a.depth)
    total = sum(r for key, r in rates.items() if key.startswith(("aten", "triton")))
    print(f"deep memory depth {a.depth}, backend {a.backend}, chunk {a.chunk}: launches per chunk (fwd + bwd)")
    for key, r in rates.items():
        note = {"allocs": "  (allocations, not launches)",
                "host us": "  (CPU time, Triton kernels not run, tiny ATen ops on the CPU)"}
        print(f"  {key:11s} {r:7.2f}" + note.get(key, ""))
    print(f"  {'launches':11s} {total:7.2f}")
    for key in ("aten fwd", "aten bwd"):
        print(f"{key}, whole call ({a.chunks} chunks), most frequent: "
              + ", ".join(f"{n} {c}" for n, c in full[key].most_common(a.top)))


if __name__ == "__main__":
    main()
