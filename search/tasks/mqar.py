"""Multi-query associative recall (MQAR), after Zoology (Arora et al. 2023, arXiv:2312.04927).

Layout of one example of length ``seq_len`` (T) with ``kv_pairs`` (K) pairs::

    position  0   1   2   3  ...  2K-2 2K-1 | 2K ...                              T-1
    input     k1  v1  k2  v2 ...  kK   vK   | filler, with each key queried once
    target    -   -   -   -  ...  -    -    | value of the key at each query, else -100

Keys are distinct tokens of ``[1, V/2)``, values distinct tokens of ``[V/2, V)`` (V =
``vocab_size``); token 0 is the filler when ``random_non_queries`` is false, otherwise fillers are
uniform over the whole vocabulary, as in Zoology. Query ``j`` sits at ``2K + 2 * gap_j``, with
gaps drawn without replacement from ``{0, ..., S-1}`` (S = (T - 2K) // 2) with probability
proportional to ``a * g ** (a - 1)`` at ``g = gap + 1`` (``a`` = ``power_a``): a small ``a``
puts queries close to the pairs, ``a = 1`` spreads them uniformly. Only query positions are
scored, K per example. Sampling without replacement uses the Gumbel top-k trick, which draws
exactly the same distribution as sequential weighted draws.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mirasdsl.errors import Problem
from .base import IGNORE, Batch, Split, TaskConfig, problem, row_permutations, to_batch


@dataclass(frozen=True)
class MQARConfig(TaskConfig):
    """Zoology's MQAR: K key-value pairs, then every key queried once at a power-law gap."""

    name: ClassVar[str] = "mqar"
    seq_len: int = 64
    kv_pairs: int = 8
    vocab_size: int = 128
    power_a: float = 0.01
    random_non_queries: bool = True

    def _problems(self) -> list[Problem]:
        out: list[Problem] = []
        if self.kv_pairs < 1:
            out.append(problem("kv_pairs", f"must be >= 1, got {self.kv_pairs}"))
        if self.seq_len < 4 * self.kv_pairs:
            out.append(problem("seq_len", f"{self.seq_len} is too short for {self.kv_pairs} pairs",
                               expected=f">= 4 * kv_pairs = {4 * self.kv_pairs}"))
        if self.vocab_size // 2 - 1 < self.kv_pairs:
            out.append(problem("vocab_size", f"{self.vocab_size} has too few keys for "
                               f"{self.kv_pairs} distinct pairs",
                               expected=f">= 2 * (kv_pairs + 1) = {2 * (self.kv_pairs + 1)}"))
        if not 0.0 < self.power_a <= 1.0:
            out.append(problem("power_a", f"must lie in (0, 1], got {self.power_a}"))
        return out

    @property
    def query_slots(self) -> int:
        """S: the number of places a query can sit (every other position after the pairs)."""
        return (self.seq_len - 2 * self.kv_pairs) // 2

    def gap_probabilities(self) -> np.ndarray:
        """Power law over gaps 0..S-1: ``p[g] ∝ a (g + 1) ** (a - 1)``. [S]"""
        g = np.arange(1, self.query_slots + 1, dtype=np.float64)
        p = self.power_a * g ** (self.power_a - 1.0)
        return p / p.sum()

    def sample(self, n: int, rng: np.random.Generator, split: Split) -> Batch:
        """``n`` MQAR examples (both splits follow the same distribution)."""
        k, t, v = self.kv_pairs, self.seq_len, self.vocab_size
        half = v // 2
        keys = 1 + row_permutations(rng, n, half - 1, k)  # [n, K] distinct in [1, V/2)
        values = half + row_permutations(rng, n, v - half, k)  # [n, K] distinct in [V/2, V)
        gumbel = rng.gumbel(size=(n, self.query_slots))  # [n, S]
        scores = np.log(self.gap_probabilities())[None, :] + gumbel  # [n, S]
        gaps = np.argsort(-scores, axis=1)[:, :k]  # [n, K] distinct, power-law weighted
        if self.random_non_queries:
            inputs = rng.integers(0, v, size=(n, t))  # [n, T]
        else:
            inputs = np.zeros((n, t), dtype=np.int64)  # [n, T]
        inputs[:, 0:2 * k:2] = keys
        inputs[:, 1:2 * k:2] = values
        query_pos = 2 * k + 2 * gaps  # [n, K]
        rows = np.arange(n)[:, None]  # [n, 1]
        inputs[rows, query_pos] = keys
        targets = np.full((n, t), IGNORE, dtype=np.int64)  # [n, T]
        targets[rows, query_pos] = values
        return to_batch(inputs, targets)
