"""Proxy tasks for ``miras search``: synthetic recall/copy/compression tasks and byte-level LM.

``make_task("mqar", seq_len=64, kv_pairs=8)`` builds a task config; ``task.batch(split, index,
size, seed)`` returns ``(inputs [N, T] long, targets [N, T] long)`` with -100 where unscored.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from mirasdsl.errors import Problem, TaskError
from .base import IGNORE, SPLITS, Batch, Split, Task, TaskConfig, rng_for
from .lm import LMConfig
from .mad import (CompressionConfig, FuzzyRecallConfig, InContextRecallConfig,
                  MemorizationConfig, NoisyRecallConfig, SelectiveCopyingConfig)
from .mqar import MQARConfig

TASKS: dict[str, type[TaskConfig]] = {
    cls.name: cls
    for cls in (MQARConfig, InContextRecallConfig, FuzzyRecallConfig, NoisyRecallConfig,
                SelectiveCopyingConfig, CompressionConfig, MemorizationConfig, LMConfig)
}


def task_params(name: str) -> dict[str, Any]:
    """The settings of task ``name`` and their defaults."""
    cls = task_class(name)
    return {f.name: f.default for f in dataclasses.fields(cls)}


def task_class(name: str) -> type[TaskConfig]:
    """The config class of a task name (``-`` and ``_`` are interchangeable)."""
    key = name.strip().lower().replace("-", "_")
    if key in TASKS:
        return TASKS[key]
    raise TaskError(f"unknown task {name!r}", [Problem(
        message=f"no task is called {name!r}", path="task", expected=", ".join(TASKS),
        suggestion=_nearest(key, TASKS))])


def make_task(name: str, **params: Any) -> TaskConfig:
    """Build the config of task ``name`` from its settings; unknown or bad ones raise TaskError."""
    cls = task_class(name)
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in params if k not in allowed]
    if unknown:
        raise TaskError(f"unknown setting(s) for task {cls.name!r}: {', '.join(unknown)}", [
            Problem(message="not a setting of this task", path=k, expected=", ".join(allowed),
                    suggestion=_nearest(k, allowed)) for k in unknown])
    return cls(**params)


def _nearest(word: str, choices: Any) -> str | None:
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return found[0] if found else None


__all__ = [
    "IGNORE", "SPLITS", "TASKS", "Batch", "CompressionConfig", "FuzzyRecallConfig",
    "InContextRecallConfig", "LMConfig", "MQARConfig", "MemorizationConfig", "NoisyRecallConfig",
    "SelectiveCopyingConfig", "Split", "Task", "TaskConfig", "make_task", "rng_for",
    "task_class", "task_params",
]
