"""Shared pieces of the spec models: the frozen base class, strict scalar types, shorthands."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict

Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]  # strict float still accepts a YAML int
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
PosInt = Annotated[int, Strict(), Field(ge=1)]
Prob = Annotated[float, Strict(), Field(gt=0.0, lt=1.0)]


class Frozen(BaseModel):
    """Base of every spec model: immutable, unknown keys refused, fields documented."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


def tagged(value: Any, kinds: tuple[str, ...], tag: str = "kind") -> Any:
    """Normalise the shorthands of a tagged choice to ``{kind: name, **options}``.

    ``"mlp"`` → ``{"kind": "mlp"}``; ``{"mlp": {"depth": 2}}`` → ``{"kind": "mlp", "depth": 2}``;
    ``{"mlp": None}`` → ``{"kind": "mlp"}``; anything else is returned unchanged for pydantic to
    judge (so its error carries the right location).
    """
    if isinstance(value, str):
        return {tag: value}
    if isinstance(value, dict) and len(value) == 1 and tag not in value:
        (name, options), = value.items()
        if name in kinds:
            if options is None:
                return {tag: name}
            if isinstance(options, dict):
                return {tag: name, **options}
    return value
