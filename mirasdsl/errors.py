"""Typed errors. Nothing below the CLI prints or exits: it raises one of these.

The CLI turns every :class:`UserError` into a clear message and exit code 2.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """Where in a source file something is: 1-based line and column."""

    file: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        if self.line is None:
            return self.file
        if self.column is None:
            return f"{self.file}:{self.line}"
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a user's input."""

    message: str
    path: str = ""  # dotted field path, e.g. "mixers.gdn.retention.local"
    location: Location | None = None
    expected: str | None = None  # what is allowed here
    suggestion: str | None = None  # nearest valid key or value, for a misspelling

    def render(self) -> str:
        head = f"{self.location}: " if self.location else ""
        where = f"{self.path}: " if self.path else ""
        text = f"{head}{where}{self.message}"
        if self.expected:
            text += f"\n    expected: {self.expected}"
        if self.suggestion:
            text += f"\n    did you mean {self.suggestion!r}?"
        return text


class UserError(Exception):
    """An error the user caused (bad file, bad flag, unreachable storage): exit code 2."""

    exit_code = 2

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems: list[Problem] = list(problems or [])

    MAX_SHOWN = 20  # problems printed; the rest are counted

    def render(self) -> str:
        lines = [self.message]
        lines += [p.render() for p in self.problems[: self.MAX_SHOWN]]
        if len(self.problems) > self.MAX_SHOWN:
            lines.append(f"... and {len(self.problems) - self.MAX_SHOWN} more problems")
        return "\n".join(lines)


class SpecError(UserError):
    """A model or search spec is invalid."""


class StorageError(UserError):
    """A study storage cannot be reached or opened."""


class TaskError(UserError):
    """A proxy task is misconfigured (e.g. a corpus path that does not exist)."""
