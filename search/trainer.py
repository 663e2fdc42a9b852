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

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
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


def train(model: nn.Module, task: Task, *, steps: int, batch_size: int, lr: float,
          weight_decay: float = 0.0, warmup: int = 0, eval_every: int | None = None,
          eval_batches: int = 4, seed: int = 0, device: str | torch.device = "cpu",
          progress: bool = True, on_eval: EvalCallback | None = None, grad_clip: float = 1.0,
          min_lr_ratio: float = 0.1) -> TrainResult:
    """Train ``model`` on ``task`` for ``steps`` optimiser steps and evaluate it on held-out data.

    ``eval_every`` (default: only at the end) counts completed steps; the last step is always
    evaluated. ``grad_clip`` <= 0 turns clipping off. The model is moved to ``device`` and left
    in training mode. Raises :class:`TrainingDiverged` on a non-finite loss or gradient norm,
    and whatever ``on_eval`` raises.
    """
    _check_args(steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
                eval_every=eval_every, eval_batches=eval_batches, seed=seed)
    device = torch.device(device)
    torch.manual_seed(seed)
    model.to(device).train()
    optimizer = make_optimizer(model, lr, weight_decay)
    held_out = _held_out(task, batch_size, eval_batches, seed, device)
    every = eval_every or steps
    tokens_per_step = batch_size * task.seq_len
    history: list[EvalPoint] = []
    start, running, since = time.perf_counter(), 0.0, 0
    with _progress_bar(progress, steps, task.name) as (bar, bar_task):
        for index in range(steps):
            batch = _to(task.batch("train", index, batch_size, seed), device)
            lr_now = lr * lr_factor(index, steps, warmup, min_lr_ratio)
            running += _train_step(model, optimizer, batch, lr_now, grad_clip, index + 1,
                                   task.vocab_size)
            since += 1
            done = index + 1
            if done % every == 0 or done == steps:
                accuracy, loss = _evaluate(model, held_out, done)
                history.append(EvalPoint(done, accuracy, loss, running / since,
                                         done * tokens_per_step, time.perf_counter() - start))
                running, since = 0.0, 0
                bar.update(bar_task, info=f"held-out acc {accuracy:.3f} loss {loss:.3f}")
                if on_eval is not None:
                    on_eval(done, {"accuracy": accuracy, "loss": loss})
            bar.advance(bar_task)
    last = history[-1]
    return TrainResult(accuracy=last.accuracy, loss=last.loss, steps=steps,
                       tokens=steps * tokens_per_step, seconds=time.perf_counter() - start,
                       history=tuple(history))


def evaluate(model: nn.Module, task: Task, *, batch_size: int, eval_batches: int, seed: int,
             device: str | torch.device = "cpu") -> tuple[float, float]:
    """(accuracy, loss) of ``model`` on the first ``eval_batches`` held-out batches of ``task``."""
    device = torch.device(device)
    held_out = _held_out(task, batch_size, eval_batches, seed, device)
    return _evaluate(model.to(device), held_out, 0)


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, lr: float,
                grad_clip: float, step: int, vocab_size: int) -> float:
    """One optimiser step; returns the batch's mean loss. ``step`` is 1-based, for errors."""
    inputs, targets = batch  # [B, T], [B, T]
    for group in optimizer.param_groups:
        group["lr"] = lr
    with _autocast(inputs.device):
        logits = model(inputs)  # [B, T, V]
    _check_logits(logits, inputs, vocab_size)
    total, count = masked_loss(logits, targets)
    loss = total / count.clamp(min=1)
    value = loss.item()
    if not math.isfinite(value):
        raise TrainingDiverged(step, "the training loss", value)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
        if not math.isfinite(norm):
            raise TrainingDiverged(step, "the gradient norm", norm)
    optimizer.step()
    return value


@torch.no_grad()
def _evaluate(model: nn.Module, batches: list[Batch], step: int) -> tuple[float, float]:
    """(token accuracy, mean loss) over the scored positions of all ``batches``."""
    was_training = model.training
    model.eval()
    correct = loss_sum = scored = 0.0
    for inputs, targets in batches:  # [B, T], [B, T]
        with _autocast(inputs.device):
            logits = model(inputs)  # [B, T, V]
        total, count = masked_loss(logits, targets)
        mask = targets != IGNORE  # [B, T]
        correct += float((logits.argmax(dim=-1)[mask] == targets[mask]).sum())
        loss_sum += float(total)
        scored += float(count)
    model.train(was_training)
    loss = loss_sum / max(scored, 1.0)
    if not math.isfinite(loss):
        raise TrainingDiverged(step, "the held-out loss", loss)
    return correct / max(scored, 1.0), loss


def _check_logits(logits: torch.Tensor, inputs: torch.Tensor, vocab_size: int) -> None:
    """The model must return [B, T, V] logits with V covering the task's vocabulary."""
    if logits.ndim != 3 or logits.shape[:2] != inputs.shape or logits.shape[-1] < vocab_size:
        raise ValueError(f"the model returned logits of shape {tuple(logits.shape)} for tokens "
                         f"{tuple(inputs.shape)}; expected [B, T, V] with V >= the task's "
                         f"vocabulary ({vocab_size})")


def _check_args(**args: Any) -> None:
    """ValueError for trainer settings outside their ranges (a programming error)."""
    rules = {"steps": 1, "batch_size": 1, "eval_batches": 1, "warmup": 0, "seed": 0}
    bad = [f"{k} must be >= {low}, got {args[k]}" for k, low in rules.items() if args[k] < low]
    if not args["lr"] > 0:
        bad.append(f"lr must be > 0, got {args['lr']}")
    if args["eval_every"] is not None and args["eval_every"] < 1:
        bad.append(f"eval_every must be >= 1, got {args['eval_every']}")
    if bad:
        raise ValueError("; ".join(bad))


def _held_out(task: Task, batch_size: int, eval_batches: int, seed: int,
              device: torch.device) -> list[Batch]:
    """The evaluation set: held-out batches ``0 .. eval_batches - 1``, on ``device``."""
    return [_to(task.batch("heldout", i, batch_size, seed), device) for i in range(eval_batches)]


def _to(batch: Batch, device: torch.device) -> Batch:
    inputs, targets = batch
    return inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)


def _autocast(device: torch.device) -> Any:
    """bf16 autocast on CUDA, nothing elsewhere (fp32 on the CPU)."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _progress_bar(enabled: bool, steps: int, name: str) -> Iterator[tuple[Progress, TaskID]]:
    """A rich progress bar on stderr (a silent one when ``enabled`` is false)."""
    columns = (TextColumn("[bold]train {task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not enabled) as bar:
        yield bar, bar.add_task(name, total=steps, info="")
