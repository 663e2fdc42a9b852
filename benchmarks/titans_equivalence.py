"""Check the step-parallel deep memory against titans-pytorch's ``NeuralMemory`` (an independent
implementation of the same recurrence), forward and every gradient.

titans-pytorch with ``chunk_size=S`` and ``batch_size=None`` takes every gradient of a call at
the call's starting weights and advances the memory once per S tokens (momentum and decay per
chunk); that is ``DeepMemoryConfig(step=S, chunk_size >= T)``. This script builds a
``NeuralMemory`` (depth-2 ``MemoryMLP``, GELU, momentum, no LayerNorm/residual wrapper, no
RMSNorms), runs it on random input, and runs ours on the q, k, v and gates its own layers
produce: ``eta = 2 lr / d_head`` (titans' loss is the mean squared error over the head dim,
ours ``0.5 ||y - v||^2``), ``mu`` its per-chunk momentum and ``g = log(1 - decay)`` its per-chunk
decay, both constant over each chunk's tokens. Its retrieve gate and head merge are applied to our
per-head output, so the two modules' outputs and the gradients of every parameter compare.

    PYTHONPATH=/tmp/peers python benchmarks/titans_equivalence.py   # titans-pytorch there
"""
from __future__ import annotations

import argparse
import sys

import torch

from mirasdsl.kernels.deep_memory import DeepMemoryConfig, deep_memory


def build(dim: int, heads: int, chunk: int, expansion: float, seed: int):
    """titans-pytorch's module with every optional transform off but momentum and decay."""
    from titans_pytorch import NeuralMemory
    from titans_pytorch.memory_models import MemoryMLP

    torch.manual_seed(seed)
    d = dim // heads
    mem = NeuralMemory(dim=dim, chunk_size=chunk, heads=heads, dim_head=d,
                       model=MemoryMLP(d, depth=2, expansion_factor=expansion),
                       mem_model_norm_add_residual=False, pre_rmsnorm=False, momentum=True)
    with torch.no_grad():  # decay and momentum away from their initial zeros, lr well above 0
        for lin, bias in ((mem.to_decay_factor[0], -2.0), (mem.to_momentum[0], 0.5),
                          (mem.to_adaptive_step[0], 0.0)):
            lin.weight.normal_(0.0, 0.3)
            lin.bias.fill_(bias)
    return mem


def ours(mem, x: torch.Tensor, chunk: int, backend: str) -> torch.Tensor:
    """The same module's projections and gates around our kernel (steps of ``chunk`` tokens)."""
    B, T, _ = x.shape
    H = mem.heads
    split = lambda t: t.unflatten(-1, (H, -1))  # noqa: E731  [B, T, H*d] -> [B, T, H, d]
    q, k, v = split(mem.to_queries(x)), split(mem.to_keys(x)), split(mem.to_values(x))
    d = q.shape[-1]
    lr = mem.adaptive_step_transform(mem.to_adaptive_step(x)).unflatten(0, (B, H)).transpose(1, 2)  # [B, T, H]
    pooled = mem.reduce_to_chunk_rep(x, chunk_size=chunk)  # [B, T/S, dim]
    per_token = lambda t: t.repeat_interleave(chunk, dim=1)  # noqa: E731  [B, N, H] -> [B, T, H]
    mu = per_token(mem.to_momentum[0](pooled).sigmoid())
    g = per_token(torch.log1p(-mem.to_decay_factor[0](pooled).sigmoid()))
    weights = tuple(p for p in mem.memory_model_parameters)  # per layer [H, d_in, d_out]
    cfg = DeepMemoryConfig(depth=len(weights), hidden=weights[0].shape[-1], activation="gelu",
                           momentum=True, chunk_size=T, step=chunk)
    o, _ = deep_memory(q, k, v, 2.0 * lr / d, weights, cfg, g=g, mu=mu, backend=backend)  # [B, T, H, d]
    o = o * mem.retrieve_gate(x).squeeze(-1).transpose(1, 2).unsqueeze(-1)
    return mem.combine_heads(o.flatten(2))


def compare(args: argparse.Namespace) -> float:
    """Worst relative RMS error over the output and every parameter's gradient."""
    mem = build(args.dim, args.heads, args.chunk, args.expansion, args.seed).double()
    x = torch.randn(args.batch, args.tokens, args.dim, dtype=torch.float64)
    cot = torch.randn(args.batch, args.tokens, args.dim, dtype=torch.float64)
    results = []
    for fn in (lambda: mem(x)[0], lambda: ours(mem, x, args.chunk, args.backend)):
        mem.zero_grad()
        out = fn()
        (out * cot).sum().backward()
        grads = {n: p.grad.clone() for n, p in mem.named_parameters() if p.grad is not None}
        results.append((out.detach(), grads))
    (ref, ref_g), (got, got_g) = results
    rel = lambda a, b: ((a - b).norm() / b.norm().clamp_min(1e-300)).item()  # noqa: E731
    worst = rel(got, ref)
    print(f"output: rel err {worst:.2e} (|ref| {ref.norm():.3e})")
    for name, g in ref_g.items():
        if name not in got_g:
            print(f"  {name}: no gradient on our side")
            return float("inf")
        e = rel(got_g[name], g)
        print(f"  grad {name:42s} rel err {e:.2e}")
        worst = max(worst, e)
    return worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--tokens", type=int, default=96, help="a multiple of --chunk")
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--expansion", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="chunk", choices=("naive", "chunk"))
    p.add_argument("--tol", type=float, default=1e-9, help="float64 on both sides")
    args = p.parse_args(argv)
    try:
        import titans_pytorch  # noqa: F401
    except ImportError:
        print("titans-pytorch is not installed (pip install titans-pytorch, or PYTHONPATH=/tmp/peers)",
              file=sys.stderr)
        return 2
    if args.tokens % args.chunk:
        print(f"--tokens ({args.tokens}) must be a multiple of --chunk ({args.chunk})", file=sys.stderr)
        return 2
    worst = compare(args)
    print(f"worst {worst:.2e} (tolerance {args.tol:.0e}): {'ok' if worst <= args.tol else 'FAIL'}")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
