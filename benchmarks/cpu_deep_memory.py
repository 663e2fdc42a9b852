"""CPU comparison of our deep-memory kernel with titans-pytorch's NeuralMemory (not the target device).

The issue's target is the H100 (`kernels.py`); this measures the same pairing on the CPU machine
the project develops on, fp32, forward + backward, median of ``--reps`` timed runs after one
warm-up. titans' module also runs its own projections and gates, so it does more work than our
kernel call: the ratio bounds what a block built on our kernel must beat.

    PYTHONPATH=/tmp/peers python benchmarks/cpu_deep_memory.py   # titans-pytorch installed there
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F


def median_seconds(fn: Callable[[], torch.Tensor], leaves: list[torch.Tensor], reps: int) -> float:
    """Forward + backward of ``fn`` (a random cotangent), median over ``reps`` after a warm-up."""
    times = []
    for i in range(reps + 1):
        for t in leaves:
            t.grad = None
        start = time.perf_counter()
        out = fn()
        out.backward(torch.randn_like(out))
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def titans(B: int, T: int, H: int, D: int, chunk: int) -> tuple[Callable, list]:
    from titans_pytorch import NeuralMemory

    mem = NeuralMemory(dim=H * D, chunk_size=chunk, heads=H, dim_head=D)
    x = torch.randn(B, T, H * D, requires_grad=True)  # [B, T, H·D]
    return (lambda: mem(x)[0]), [x, *mem.parameters()]


def titans_like(B: int, T: int, H: int, D: int, chunk: int, steps: bool = False) -> tuple[object, dict]:
    """Titans' memory in our terms (depth-2 MLP of hidden 4 D, GELU, LayerNorm + residual, L2
    bias, momentum, per-token decay) and random leaf inputs: ``(cfg, {name: tensor})``.
    ``steps``: titans-pytorch's own update (every gradient at the call's start, one step per
    ``chunk`` tokens: ``chunk_size=T, step=chunk``); else the chunk-wise update of the Titans
    paper (gradients at each chunk's start, a step per token)."""
    from mirasdsl.kernels.deep_memory import DeepMemoryConfig

    cfg = DeepMemoryConfig(depth=2, hidden=4 * D, activation="gelu", residual=True, norm=True,
                           bias="l2", momentum=True, chunk_size=T if steps else chunk,
                           step=chunk if steps else 1)
    q, k = (F.normalize(torch.randn(B, T, H, D), dim=-1).requires_grad_(True) for _ in range(2))
    x = {"q": q, "k": k, "v": torch.randn(B, T, H, D, requires_grad=True),  # [B, T, H, D]
         "eta": (0.01 * torch.rand(B, T, H)).requires_grad_(True),
         "g": F.logsigmoid(torch.randn(B, T, H) + 4).requires_grad_(True),
         "mu": (0.9 * torch.rand(B, T, H)).requires_grad_(True),
         "w1": (torch.randn(H, D, 4 * D) * D ** -0.5).requires_grad_(True),
         "w2": (torch.randn(H, 4 * D, D) * (4 * D) ** -0.5).requires_grad_(True)}
    return cfg, x


def call(run: Callable, cfg: object, x: dict) -> Callable[[], torch.Tensor]:
    """``run(q, k, v, eta, (w1[, w2]), cfg, g=, mu=)``'s output as a thunk."""
    ws = tuple(x[n] for n in ("w1", "w2") if n in x)
    return lambda: run(x["q"], x["k"], x["v"], x["eta"], ws, cfg, g=x["g"], mu=x["mu"])[0]


def ours(B: int, T: int, H: int, D: int, chunk: int, steps: bool = False) -> tuple[Callable, list]:
    from mirasdsl.kernels.deep_memory import chunk_deep_memory, step_deep_memory

    cfg, x = titans_like(B, T, H, D, chunk, steps)
    return call(step_deep_memory if steps else chunk_deep_memory, cfg, x), list(x.values())


def block(B: int, T: int, H: int, D: int, chunk: int) -> tuple[Callable, list]:
    """Our whole mixer from the ``titans-pytorch`` preset (projections, gates, output gate around
    the step form): module against module with titans-pytorch's NeuralMemory."""
    from cases import memory_block, set_device

    set_device("cpu")
    mixer = memory_block(H * D, H, T, chunk)
    x = torch.randn(B, T, H * D, requires_grad=True)  # [B, T, H·D]
    return (lambda: mixer(x)[0]), [x, *mixer.parameters()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--T", type=int, default=1024)
    p.add_argument("--H", type=int, default=4)
    p.add_argument("--D", type=int, default=64)
    p.add_argument("--chunks", default="64,16")
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args()
    torch.manual_seed(0)
    print(f"B={a.B} T={a.T} H={a.H} D={a.D} (dim {a.H * a.D}), fp32, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print("| chunk | titans-pytorch fwd+bwd s | ours, titans-pytorch's update (step form) s | titans/ours "
          "| ours, whole mixer (titans-pytorch preset) s | titans/ours "
          "| ours, chunk-wise update (chunk backend) s | titans/ours |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for chunk in (int(c) for c in a.chunks.split(",")):
        t = median_seconds(*titans(a.B, a.T, a.H, a.D, chunk), a.reps)
        s = median_seconds(*ours(a.B, a.T, a.H, a.D, chunk, steps=True), a.reps)
        m = median_seconds(*block(a.B, a.T, a.H, a.D, chunk), a.reps)
        o = median_seconds(*ours(a.B, a.T, a.H, a.D, chunk), a.reps)
        print(f"| {chunk} | {t:.3f} | {s:.3f} | {t / s:.2f}x | {m:.3f} | {t / m:.2f}x | {o:.3f} | {t / o:.2f}x |")


if __name__ == "__main__":
    main()
