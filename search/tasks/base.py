"""What every proxy task shares: splits, seeding, the batch contract and config checks.

A task is a frozen dataclass. ``task.batch(split, index, size, seed)`` returns
``(inputs [size, seq_len] long, targets [size, seq_len] long)``: ``targets[b, t]`` is the token a
causal model should predict after reading ``inputs[b, :t + 1]``, or :data:`IGNORE` (-100) where
the position is not scored. The same ``(seed, split, index)`` always gives the same batch (numpy's
PCG64 stream is stable across platforms and versions); the train and held-out splits draw from
disjoint seed sequences, so no batch of one split is ever generated from a seed of the other.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import torch

from mirasdsl.errors import Problem, TaskError

IGNORE = -100  # target of an unscored position (torch's cross-entropy ignore_index)
Split = Literal["train", "heldout"]
SPLITS: tuple[Split, ...] = ("train", "heldout")
_SPLIT_IDS = {"train": 0, "heldout": 1}

Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs [N, T] long, targets [N, T] long)


@runtime_checkable
class Task(Protocol):
    """What the trainer needs from a task."""

    name: ClassVar[str]
    seq_len: int

    @property
    def vocab_size(self) -> int: ...

    def batch(self, split: Split, index: int, size: int, seed: int) -> Batch: ...


def rng_for(seed: int, split: Split, index: int) -> np.random.Generator:
    """The generator of batch ``index`` of ``split`` under ``seed``.

    The seed sequence's entropy is ``(seed, split id, index)``: two splits never share one.
    """
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_IDS[split], index]))


@dataclass(frozen=True)
class TaskConfig:
    """Base of every task config: checks fields on construction and builds seeded batches.

    Subclasses set ``name``, declare their fields, and implement :meth:`sample` and
    :meth:`_problems`; the ones whose vocabulary is not a field define a ``vocab_size`` property.
    """

    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        problems = _type_problems(self) or self._problems()
        if problems:
            fields = ", ".join(dict.fromkeys(p.path for p in problems))
            raise TaskError(f"invalid settings for task {self.name!r}: {fields}", problems)

    def _problems(self) -> list[Problem]:
        """Cross-field checks; an empty list when the config is usable."""
        return []

    def sample(self, n: int, rng: np.random.Generator, split: Split) -> Batch:
        """``n`` examples drawn from ``rng``; ``split`` matters only where the data differ."""
        raise NotImplementedError

    def batch(self, split: Split, index: int, size: int, seed: int) -> Batch:
        """Batch ``index`` of ``split``: deterministic in ``(seed, split, index)``."""
        if size < 1:
            raise ValueError(f"batch size must be >= 1, got {size}")
        inputs, targets = self.sample(size, rng_for(seed, split, index), split)
        return inputs, targets

    def generate(self, n: int, seed: int, split: Split = "train") -> Batch:
        """``n`` examples of ``split`` under ``seed`` (one batch, index 0)."""
        return self.batch(split, 0, n, seed)


def problem(field: str, message: str, expected: str | None = None) -> Problem:
    """A :class:`Problem` about one field of a task config."""
    return Problem(message=message, path=field, expected=expected)


def _type_problems(config: TaskConfig) -> list[Problem]:
    """Fields whose value does not have the declared type (bools are not ints here)."""
    hints = typing.get_type_hints(type(config))
    out: list[Problem] = []
    for f in dataclasses.fields(config):
        value, hint = getattr(config, f.name), hints[f.name]
        if not _is_instance(value, hint):
            out.append(problem(f.name, f"has the wrong type ({type(value).__name__}: {value!r})",
                               expected=_type_name(hint)))
    return out


def _is_instance(value: object, hint: object) -> bool:
    """``isinstance`` for the few annotations task configs use (int, float, bool, str, X | None)."""
    args = typing.get_args(hint)
    if args:  # a union such as ``str | None``
        return any(_is_instance(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)  # type: ignore[arg-type]


def _type_name(hint: object) -> str:
    args = typing.get_args(hint)
    if args:
        return " or ".join(_type_name(a) for a in args)
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def to_batch(inputs: np.ndarray, targets: np.ndarray) -> Batch:
    """Numpy arrays -> a pair of long tensors (contiguous, on the CPU)."""
    return torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.int64)), \
        torch.from_numpy(np.ascontiguousarray(targets, dtype=np.int64))


def row_permutations(rng: np.random.Generator, n: int, size: int, k: int) -> np.ndarray:
    """For each of ``n`` rows, ``k`` distinct integers of ``[0, size)`` in random order. [n, k]"""
    u = rng.random((n, size))  # [n, size]; the answer is the argsort's first k columns
    if k < size:  # the same, in O(size + k log k): partition, then order the k smallest
        smallest = np.argpartition(u, k - 1, axis=1)[:, :k]  # [n, k] in no particular order
        order = np.argsort(np.take_along_axis(u, smallest, axis=1), axis=1)  # [n, k]
        return np.take_along_axis(smallest, order, axis=1)
    return np.argsort(u, axis=1)
