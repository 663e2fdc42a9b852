"""The six synthetic tasks of MAD (Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid
Architectures", arXiv:2403.17844), written for a causal language model.

Defaults are MAD's baseline settings. Every task here scores only the positions whose answer is
determined by the context (MAD trains recall tasks on every next token but evaluates only these);
training on the same positions one evaluates keeps the loss free of unpredictable noise.

* ``in_context_recall``: ``seq_len / 2`` key-value pairs; each sequence draws its own random map
  from keys ``[0, D/2)`` to values ``[D/2, D)`` (D = data tokens). The value of every pair whose
  key already appeared is scored (MAD's multi-query form); the last pair always repeats a key.
* ``noisy_recall``: the same, but each pair is replaced by two noise tokens (from the last
  ``noise_vocab_size`` tokens) with probability ``frac_noise``.
* ``fuzzy_recall``: keys and values are motifs of 1..``k_motif_size`` / 1..``v_motif_size``
  distinct tokens; every token of a repeated key's value is scored; sequences are left-padded
  with a pad token. As in MAD, held-out keys always have the largest motif size.
* ``selective_copying``: ``num_tokens_to_copy`` data tokens scattered among blanks, then a copy
  token and as many blanks; at the i-th trailing blank the i-th data token is the target.
* ``compression``: see :class:`CompressionConfig` for how MAD's encoder-decoder task is adapted.
* ``memorization``: a fixed key-to-value bijection (drawn from ``map_seed``, the same in every
  split) that the model must store in its weights; sequences are ``key, insert`` pairs and the
  value is the target at each insert token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mirasdsl.errors import Problem
from .base import IGNORE, Batch, Split, TaskConfig, problem, row_permutations, to_batch


def _positive(config: TaskConfig, *fields: str) -> list[Problem]:
    """Problems for the named integer fields that are < 1."""
    return [problem(f, f"must be >= 1, got {getattr(config, f)}")
            for f in fields if getattr(config, f) < 1]


def _pair_length(config: TaskConfig, minimum: int) -> list[Problem]:
    """Problems with a ``seq_len`` that must hold whole pairs of tokens, at least ``minimum``."""
    seq_len = getattr(config, "seq_len")
    if seq_len % 2 or seq_len < minimum:
        return [problem("seq_len", f"must be even (pairs of tokens) and >= {minimum}, "
                        f"got {seq_len}")]
    return []


def _recall_batch(n: int, rng: np.random.Generator, seq_len: int, data: int,
                  noise_vocab: int, frac_noise: float) -> Batch:
    """Multi-query recall with optional noise pairs; tokens ``[0, data)`` are keys and values,
    ``[data, data + noise_vocab)`` are noise."""
    pairs, nk = seq_len // 2, data // 2
    keys = rng.integers(0, nk, size=(n, pairs))  # [n, P]
    table = rng.integers(nk, data, size=(n, nk))  # [n, nk] this sequence's map
    noise = rng.random((n, pairs)) < frac_noise  # [n, P]
    rows = np.arange(n)
    noise[rows, rng.integers(0, pairs - 1, size=n)] = False  # one real pair before the last
    noise[:, -1] = False
    pick = np.where(noise[:, :-1], -1.0, rng.random((n, pairs - 1)))  # [n, P-1]
    keys[:, -1] = keys[rows, pick.argmax(axis=1)]  # the last pair repeats an earlier real key
    values = table[rows[:, None], keys]  # [n, P]
    codes = np.where(noise, -1, rows[:, None] * nk + keys).ravel()  # [n*P] (row, key) ids
    first = np.zeros(n * pairs, dtype=bool)
    first[np.unique(codes, return_index=True)[1]] = True  # first pair of each (row, key)
    seen = ~first.reshape(n, pairs) & ~noise  # [n, P] a real pair whose key came before
    pair_tokens = np.stack([keys, values], axis=2)  # [n, P, 2]
    if noise_vocab:
        noise_tokens = rng.integers(data, data + noise_vocab, size=(n, pairs, 2))  # [n, P, 2]
        pair_tokens = np.where(noise[..., None], noise_tokens, pair_tokens)
    targets = np.full((n, pairs, 2), IGNORE, dtype=np.int64)  # [n, P, 2]
    targets[..., 0] = np.where(seen, values, IGNORE)  # at the key: predict its value
    return to_batch(pair_tokens.reshape(n, 2 * pairs), targets.reshape(n, 2 * pairs))


@dataclass(frozen=True)
class InContextRecallConfig(TaskConfig):
    """MAD in-context recall: values of keys seen earlier in the sequence."""

    name: ClassVar[str] = "in_context_recall"
    seq_len: int = 128
    vocab_size: int = 16

    def _problems(self) -> list[Problem]:
        out = _pair_length(self, 4)
        if self.vocab_size < 4:
            out.append(problem("vocab_size", f"must be >= 4, got {self.vocab_size}"))
        return out

    def sample(self, n: int, rng: np.random.Generator, split: Split) -> Batch:
        return _recall_batch(n, rng, self.seq_len, self.vocab_size, 0, 0.0)


@dataclass(frozen=True)
class NoisyRecallConfig(TaskConfig):
    """MAD noisy in-context recall: recall with pairs replaced by noise tokens."""

    name: ClassVar[str] = "noisy_recall"
    seq_len: int = 128
    vocab_size: int = 32
    noise_vocab_size: int = 16
    frac_noise: float = 0.2

    def _problems(self) -> list[Problem]:
        out = _positive(self, "noise_vocab_size") + _pair_length(self, 4)
        if self.vocab_size - self.noise_vocab_size < 4:
            out.append(problem("vocab_size", f"{self.vocab_size} leaves fewer than 4 data tokens",
                               expected=f">= noise_vocab_size + 4 = {self.noise_vocab_size + 4}"))
        if not 0.0 <= self.frac_noise < 1.0:
            out.append(problem("frac_noise", f"must lie in [0, 1), got {self.frac_noise}"))
        return out

    def sample(self, n: int, rng: np.random.Generator, split: Split) -> Batch:
        data = self.vocab_size - self.noise_vocab_size
        return _recall_batch(n, rng, self.seq_len, data, self.noise_vocab_size, self.frac_noise)


@dataclass(frozen=True)
class FuzzyRecallConfig(TaskConfig):
    """MAD fuzzy in-context recall: keys and values are variable-length token motifs."""

    name: ClassVar[str] = "fuzzy_recall"
    seq_len: int = 128
    vocab_size: int = 16
    k_motif_size: int = 3
    v_motif_size: int = 3

    @property
    def pad_token(self) -> int:
        return self.vocab_size - 1

    def _problems(self) -> list[Problem]:
        out = _positive(self, "k_motif_size", "v_motif_size")
        half = (self.vocab_size - 1) // 2
        if half < max(self.k_motif_size, self.v_motif_size, 2):
            need = 2 * max(self.k_motif_size, self.v_motif_size, 2) + 1
            out.append(problem("vocab_size", f"{self.vocab_size} is too small for motifs of "
                               f"{self.k_motif_size}/{self.v_motif_size} distinct tokens",
                               expected=f">= {need}"))
        need = 2 * (self.k_motif_size + self.v_motif_size)
        if self.seq_len < need:
            out.append(problem("seq_len", f"{self.seq_len} cannot hold two pairs",
                               expected=f">= 2 * (k_motif_size + v_motif_size) = {need}"))
        return out

    def sample(self, n: int, rng: np.random.Generator, split: Split) -> Batch:
        inputs = np.full((n, self.seq_len), self.pad_token, dtype=np.int64)  # [n, T]
        targets = np.full((n, self.seq_len), IGNORE, dtype=np.int64)  # [n, T]
        for row in range(n):
            tokens, scored = self._sequence(rng, split)
            inputs[row, self.seq_len - len(tokens):] = tokens  # left padding
            targets[row, self.seq_len - len(scored):] = scored
        return to_batch(inputs, targets)

    def _sequence(self, rng: np.random.Generator, split: Split) -> tuple[list[int], list[int]]:
        """One unpadded example: its tokens and their targets (same length)."""
        half, k_max, v_max = (self.vocab_size - 1) // 2, self.k_motif_size, self.v_motif_size
        most = self.seq_len // 2 + 1  # more pairs than can fit
        k_min = k_max if split == "heldout" else 1
        k_sizes = rng.integers(k_min, k_max + 1, size=most).tolist()
        v_sizes = rng.integers(1, v_max + 1, size=most).tolist()
        k_perm = np.argsort(rng.random((most, half)), axis=1)[:, :k_max].tolist()
        v_perm = (half + np.argsort(rng.random((most, half)), axis=1)[:, :v_max]).tolist()
        table: dict[tuple[int, ...], list[int]] = {}
        tokens: list[int] = []
        scored: list[int] = []
        for i in range(most):
            final = len(tokens) + 2 * (k_max + v_max) > self.seq_len  # no room for another
            key = tuple(k_perm[i][:k_sizes[i]])
            if final:  # the last pair repeats a key already shown
                key = list(table)[int(rng.integers(len(table)))]
            repeat = key in table
            value = table.setdefault(key, v_perm[i][:v_sizes[i]])
            tokens += [*key, *value]
            # from the key's last token on, each position predicts the next value token
            answer = value if repeat else [IGNORE] * len(value)
            scored += [IGNORE] * (len(key) - 1) + answer + [IGNORE]
            if final:
                return tokens, scored
        raise AssertionError("unreachable: a final pair always comes before the loop ends")


@dataclass(frozen=True)
class SelectiveCopyingConfig(TaskConfig):
    """MAD selective copying: copy the data tokens scattered among blanks, in order."""

    name: ClassVar[str] = "selective_copying"
    seq_len: int = 256
    vocab_size: int = 16
    num_tokens_to_copy: int = 16

    @property
    def blank_token(self) -> int:
        return self.vocab_size - 2

    @property
    def copy_token(self) -> int:
        return self.vocab_size - 1

    def _problems(self) -> list[Problem]:
        out = _positive(self, "num_tokens_to_copy")
        if self.vocab_size < 3:
            out.append(problem("vocab_size", f"must be >= 3 (blank, copy, data), got "
                               f"{self.vocab_size}"))
        need = 2 * self.num_tokens_to_copy + 1
        if self.seq_len < need:
            out.append(problem("seq_len", f"{self.seq_len} is too short to copy "
                               f"{self.num_tokens_to_copy} tokens",
                               expected=f">= 2 * num_tokens_to_copy + 1 = {need}"))
        return out

    def sample(self, n: int, rng: np.random.Generator, split: Split) -> Batch:
        m, t = self.num_tokens_to_copy, self.seq_len
        prefix = t - m - 1  # data tokens and blanks, before the copy token
        data = rng.integers(0, self.vocab_size - 2, size=(n, m))  # [n, M]
        where = np.sort(row_permutations(rng, n, prefix, m), axis=1)  # [n, M] increasing
        inputs = np.full((n, t), self.blank_token, dtype=np.int64)  # [n, T]
        rows = np.arange(n)[:, None]
        inputs[rows, where] = data
        inputs[:, prefix] = self.copy_token
        targets = np.full((n, t), IGNORE, dtype=np.int64)  # [n, T]
        targets[:, prefix + 1:] = data  # the i-th trailing blank answers the i-th data token
        return to_batch(inputs, targets)


@dataclass(frozen=True)
class CompressionConfig(TaskConfig):
    """MAD compression, adapted to a causal language model.

    MAD encodes ``seq_len - 1`` random tokens and a compression token with the layers under test,
    keeps only the last position's vector and has a small MLP decoder, given each position's
    embedding, reconstruct every input token: the layers must squeeze the sequence into one
    vector. A causal LM has no such bottleneck to impose, so the proxy is::

        x_0 ... x_{P-1}  <compress>  c_{p_1} ... c_{p_Q}
        targets at c_{p_j}: x_{p_j}   (everything else unscored)

    with ``P = seq_len // 2`` random data tokens, then ``Q = seq_len - P - 1`` position cues: cue
    token ``c_i`` (one token per prefix position, ``Q`` distinct positions in random order) asks
    for ``x_i``, playing the part of MAD's decoder position embedding. For a recurrent mixer the
    fixed-size state after ``<compress>`` is exactly MAD's bottleneck: every answer must be read
    out of it. Softmax attention keeps the whole prefix in its KV cache, so for attention the task
    is positional lookup, not compression: compare recurrent candidates on it, and do not read an
    attention model's score as compression ability. The vocabulary is ``data_vocab`` data tokens,
    the compression token and ``P`` cue tokens, so it grows with ``seq_len``.
    """

    name: ClassVar[str] = "compression"
    seq_len: int = 64
    data_vocab: int = 15

    @property
    def prefix_len(self) -> int:
        return self.seq_len // 2

    @property
    def compress_token(self) -> int:
        return self.data_vocab

    @property
    def vocab_size(self) -> int:
        return self.data_vocab + 1 + self.prefix_len

    def _problems(self) -> list[Problem]:
        out = _positive(self, "data_vocab")
        if self.seq_len < 3:
            out.append(problem("seq_len", f"must be >= 3, got {self.seq_len}"))
        return out

    def sample(self, n: int, rng: np.random.Generator, split: Split) -> Batch:
        p, t = self.prefix_len, self.seq_len
        q = t - p - 1
        data = rng.integers(0, self.data_vocab, size=(n, p))  # [n, P]
        asked = row_permutations(rng, n, p, q)  # [n, Q] distinct prefix positions
        inputs = np.empty((n, t), dtype=np.int64)  # [n, T]
        inputs[:, :p] = data
        inputs[:, p] = self.compress_token
        inputs[:, p + 1:] = self.data_vocab + 1 + asked  # cue token of each asked position
        targets = np.full((n, t), IGNORE, dtype=np.int64)  # [n, T]
        targets[:, p + 1:] = np.take_along_axis(data, asked, axis=1)
        return to_batch(inputs, targets)


@dataclass(frozen=True)
class MemorizationConfig(TaskConfig):
    """MAD memorization: recall a fixed key-value map stored in the weights."""

    name: ClassVar[str] = "memorization"
    seq_len: int = 32
    vocab_size: int = 256
    map_seed: int = 0

    @property
    def insert_token(self) -> int:
        return self.vocab_size - 1

    @property
    def num_keys(self) -> int:
        return (self.vocab_size - 1) // 2

    def _problems(self) -> list[Problem]:
        out = _pair_length(self, 2)
        if self.vocab_size < 3:
            out.append(problem("vocab_size", f"must be >= 3, got {self.vocab_size}"))
        if self.map_seed < 0:
            out.append(problem("map_seed", f"must be >= 0, got {self.map_seed}"))
        return out

    def value_of(self) -> np.ndarray:
        """The fixed map: ``value_of()[key]`` for every key ``[0, num_keys)``. [num_keys]"""
        rng = np.random.default_rng(np.random.SeedSequence([self.map_seed, 7]))
        return self.num_keys + rng.permutation(self.num_keys)

    def sample(self, n: int, rng: np.random.Generator, split: Split) -> Batch:
        pairs = self.seq_len // 2
        keys = rng.integers(0, self.num_keys, size=(n, pairs))  # [n, P]
        inputs = np.full((n, pairs, 2), self.insert_token, dtype=np.int64)  # [n, P, 2]
        inputs[..., 0] = keys
        targets = np.full((n, pairs, 2), IGNORE, dtype=np.int64)  # [n, P, 2]
        targets[..., 1] = self.value_of()[keys]  # at the insert token: the key's value
        return to_batch(inputs.reshape(n, -1), targets.reshape(n, -1))
