"""A small trainer for proxy tasks: AdamW, warm-up + cosine, clipping, periodic held-out eval.

The model is any ``torch.nn.Module`` mapping tokens ``[B, T]`` (long) to logits
``[B, T, vocab]``. Loss is the cross-entropy over scored positions (targets != -100), computed in
fp32. On CUDA the forward runs under bf16 autocast; elsewhere everything is fp32.

Determinism: training batch ``i`` is ``task.batch("train", i, batch_size, seed)`` and the
evaluation set is held-out batches ``0 .. eval_batches - 1`` under the same seed, generated once,
so the data are identical for a seed on every machine. ``torch.manual_seed(seed)`` is called at
the start (for dropout or any other randomness inside the model). On the CPU, with the same
model initialisation, torch build and thread count, two runs give bit-identical losses and
parameters (tests check this). On CUDA, atomics in some backward kernels and autotuning may
change the last bits from run to run; the data stay identical.

Evaluation after every ``eval_every`` completed steps and after the last step calls
``on_eval(step, {"accuracy": ..., "loss": ...})``; anything it raises (e.g. ``optuna.TrialPruned``)
propagates. A non-finite loss or gradient norm raises :class:`TrainingDiverged`.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .tasks.base import IGNORE, Batch, Task

EvalCallback = Callable[[int, dict[str, float]], None]


class TrainingDiverged(RuntimeError):
    """The training loss or gradient became NaN or infinite (a bad candidate, not a user error)."""

    def __init__(self, step: int, what: str, value: float) -> None:
        super().__init__(f"training diverged at step {step}: {what} is {value}")
        self.step = step
        self.what = what
        self.value = value


@dataclass(frozen=True)
class EvalPoint:
    """One held-out evaluation: after ``step`` optimiser steps and ``tokens`` training tokens."""

    step: int
    accuracy: float  # fraction of scored held-out positions predicted exactly (argmax)
    loss: float  # mean cross-entropy over scored held-out positions (nats)
    train_loss: float  # mean training loss since the previous evaluation
    tokens: int
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`: the last evaluation, totals and every evaluation."""

    accuracy: float
    loss: float
    steps: int
    tokens: int  # input tokens of all training batches (steps * batch_size * seq_len)
    seconds: float
    history: tuple[EvalPoint, ...]


def lr_factor(step: int, steps: int, warmup: int, min_ratio: float = 0.1) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based).

    Linear warm-up ``(step + 1) / warmup`` for the first ``warmup`` steps, reaching 1 at step
    ``warmup - 1``; then a cosine from 1 down to ``min_ratio`` at the last step ``steps - 1``.
    """
    if step < warmup:
        return (step + 1) / warmup
    decay_steps = steps - warmup
    if decay_steps <= 1:
        return 1.0
    progress = (step - warmup) / (decay_steps - 1)  # 0 at the first decay step, 1 at the last
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (biases, norms' gains and scalars are not decayed;
    embeddings are matrices and are decayed)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    keep = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": keep, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.95))


def masked_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of fp32 cross-entropy over scored positions, their count).

    logits [B, T, V], targets [B, T] with -100 where unscored.
    """
    flat = logits.reshape(-1, logits.shape[-1]).float()  # [B*T, V]
    total = F.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE, reduction="sum")
    return total, (targets != IGNORE).sum()
