"""Byte-level language modelling on a real local text corpus.

The default corpus is the Python standard library's own source on this machine: every ``*.py``
under ``sysconfig.get_paths()["stdlib"]`` outside ``site-packages``/``dist-packages``, in sorted
order (so it is deterministic for one Python installation; another Python version has other
files). A user may name a file or a directory instead (``pattern`` picks the files of a directory,
default every non-hidden file).

Split: with several files, file ``i`` of the sorted list is held out when
``floor((i + 1) f) > floor(i f)`` (``f`` = ``heldout_fraction``), which spreads the held-out files
evenly through the corpus. When that leaves either side shorter than one window (for example a
single file), the concatenated bytes are split by offset instead: the last ``f`` of the bytes
are held out. Windows are ``seq_len + 1`` contiguous bytes at uniform random offsets of the
split's concatenated bytes (a window may span two files); every position is scored with the next
byte. The vocabulary is the 256 byte values; no padding is needed.
"""
from __future__ import annotations

import functools
import math
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from mirasdsl.errors import Problem, TaskError
from .base import Batch, Split, TaskConfig, problem, to_batch

_SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


def stdlib_root() -> Path:
    """Where this interpreter's standard library lives."""
    return Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=16)
def corpus_files(path: str | None, pattern: str | None) -> tuple[Path, ...]:
    """The sorted files of the corpus: the stdlib's ``*.py`` when ``path`` is None.

    Raises :class:`TaskError` when the path does not exist or holds no non-empty file. A listing
    that succeeds is cached for the life of the process.
    """
    if path is None:
        root, glob = stdlib_root(), pattern or "*.py"
    else:
        root, glob = Path(path).expanduser(), pattern or "*"
    if not root.exists():
        raise TaskError(f"corpus path {str(root)!r} does not exist",
                        [problem("path", "name an existing text file or a directory of them")])
    if root.is_file():
        files = [root]
    else:
        files = sorted(p for p in root.rglob(glob) if p.is_file() and _wanted(p.relative_to(root)))
    files = [p for p in files if p.stat().st_size > 0]
    if not files:
        what = "is empty" if root.is_file() else f"holds no non-empty file matching {glob!r}"
        raise TaskError(f"corpus path {str(root)!r} {what}",
                        [problem("path", "the language-modelling corpus needs some text",
                                 expected="a non-empty file, or a directory with such files "
                                          "(see also 'pattern')")])
    return tuple(files)


def _wanted(relative: Path) -> bool:
    """Skip hidden files and folders, installed packages and byte-code caches."""
    return not any(part.startswith(".") or part in _SKIPPED_DIRS for part in relative.parts)


def load_splits(path: str | None, pattern: str | None, heldout_fraction: float,
                min_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """(train bytes, held-out bytes) of the corpus as uint8 arrays, each >= ``min_bytes``.

    Split by file, or by offset when a side of the file split is shorter than ``min_bytes``.
    """
    train, heldout = _split_by_file(path, pattern, heldout_fraction)
    if min(len(train), len(heldout)) < min_bytes:
        train, heldout = _split_by_offset(path, pattern, heldout_fraction)
    if min(len(train), len(heldout)) < min_bytes:
        raise TaskError(f"the corpus ({len(train) + len(heldout)} bytes) is too small for "
                        f"windows of {min_bytes} bytes in both splits",
                        [problem("seq_len", "shorten the windows or use a larger corpus")])
    return train, heldout


@functools.lru_cache(maxsize=4)
def _split_by_file(path: str | None, pattern: str | None,
                   fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Held-out files spread evenly through the sorted list; cached per process."""
    blobs = [p.read_bytes() for p in corpus_files(path, pattern)]
    held = [math.floor((i + 1) * fraction) > math.floor(i * fraction) for i in range(len(blobs))]
    train = b"".join(b for b, h in zip(blobs, held) if not h)
    heldout = b"".join(b for b, h in zip(blobs, held) if h)
    return np.frombuffer(train, dtype=np.uint8), np.frombuffer(heldout, dtype=np.uint8)


@functools.lru_cache(maxsize=4)
def _split_by_offset(path: str | None, pattern: str | None,
                     fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The last ``fraction`` of the concatenated bytes held out; cached per process."""
    whole = b"".join(p.read_bytes() for p in corpus_files(path, pattern))
    cut = len(whole) - max(1, round(len(whole) * fraction))
    data = np.frombuffer(whole, dtype=np.uint8)
    return data[:cut], data[cut:]


@dataclass(frozen=True)
class LMConfig(TaskConfig):
    """Next-byte prediction on windows of a local text corpus (stdlib source by default)."""

    name: ClassVar[str] = "lm"
    seq_len: int = 256
    path: str | None = None
    pattern: str | None = None
    heldout_fraction: float = 0.1

    @property
    def vocab_size(self) -> int:
        return 256

    def _problems(self) -> list[Problem]:
        out: list[Problem] = []
        if self.seq_len < 1:
            out.append(problem("seq_len", f"must be >= 1, got {self.seq_len}"))
        if not 0.0 < self.heldout_fraction < 1.0:
            out.append(problem("heldout_fraction", f"must lie in (0, 1), got "
                               f"{self.heldout_fraction}"))
        if not out:
            corpus_files(self.path, self.pattern)  # a missing or empty corpus fails here
        return out

    def split_bytes(self, split: Split) -> np.ndarray:
        """The concatenated bytes of one split. [bytes] uint8"""
        train, heldout = load_splits(self.path, self.pattern, self.heldout_fraction,
                                     self.seq_len + 1)
        return train if split == "train" else heldout

    def sample(self, n: int, rng: np.random.Generator, split: Split) -> Batch:
        data = self.split_bytes(split)
        starts = rng.integers(0, len(data) - self.seq_len, size=n)  # [n]
        windows = data[starts[:, None] + np.arange(self.seq_len + 1)]  # [n, T+1]
        return to_batch(windows[:, :-1], windows[:, 1:])
