"""Turn pydantic's validation errors into :class:`Problem`s with file:line:column and hints."""
from __future__ import annotations

import re
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from mirasdsl.errors import Problem
from mirasdsl.spec import axes, features
from mirasdsl.spec.layout import nearest
from mirasdsl.spec.yamlio import Positions

KINDS_BY_KEY: dict[str, tuple[str, ...]] = {
    **axes.MIXER_AXES,
    "local": axes.LOCAL_KINDS,
    "global": axes.GLOBAL_KINDS,
    "feature_map": features.FEATURE_MAP_KINDS,
    "channel_mixer": ("swiglu", "mlp", "none"),
}
_UNION_TAGS = {"tuple", "parallel", "simple"} | {k for ks in KINDS_BY_KEY.values() for k in ks}
_AT = re.compile(r"^(?:Value error, )?\[at ([^\]]+)\] (.*)$", re.S)
_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string",
               "dict": "a mapping", "list": "a list", "model": "a mapping", "model_attributes": "a mapping"}


def _walk(data: Any, loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Follow ``loc`` through the YAML data: (path that exists in the file, full dotted path)."""
    found: list[Any] = []
    full: list[Any] = []
    cur = data
    exists = True
    for el in loc:
        if exists and isinstance(cur, dict) and el in cur:
            cur = cur[el]
            found.append(el)
            full.append(el)
        elif exists and isinstance(cur, list) and isinstance(el, int) and 0 <= el < len(cur):
            cur = cur[el]
            found.append(el)
            full.append(el)
        elif isinstance(el, str) and el in _UNION_TAGS and not (isinstance(cur, dict) and el in cur):
            continue  # a union tag pydantic adds to the path; not a key of the file
        elif isinstance(el, str) and el.startswith(("function-", "json-or-python")):
            continue
        else:
            exists = False
            full.append(el)
    return tuple(found), tuple(full)


def _unwrap(tp: Any) -> list[Any]:
    """The concrete alternatives behind Annotated / Optional / Union."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for a in typing.get_args(tp) for t in _unwrap(a)]
    return [tp]


def _descend(tp: Any, el: Any) -> Any:
    for alt in _unwrap(tp):
        origin = typing.get_origin(alt)
        if origin is dict and isinstance(el, str):
            return typing.get_args(alt)[1]
        if origin is list and isinstance(el, int):
            return typing.get_args(alt)[0]
        if isinstance(alt, type) and issubclass(alt, BaseModel):
            for name, f in alt.model_fields.items():
                if el in (name, f.alias):
                    return f.annotation
    return None


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The spec model class that owns the last element of ``loc`` (for 'unknown key' hints)."""
    tp: Any = root
    for el in loc:
        models = [a for a in _unwrap(tp) if isinstance(a, type) and issubclass(a, BaseModel)]
        tagged = [m for m in models if el == _kind_of(m)]
        if tagged:
            tp = tagged[0]
            continue
        nxt = _descend(tp, el)
        if nxt is None:
            return None
        tp = nxt
    models = [a for a in _unwrap(tp) if isinstance(a, type) and issubclass(a, BaseModel)]
    return models[0] if len(models) == 1 else None


def _kind_of(model: type[BaseModel]) -> str | None:
    names = {"TupleMixer": "tuple", "ParallelMixer": "parallel", "SimpleMap": "simple"}
    if model.__name__ in names:
        return names[model.__name__]
    f = model.model_fields.get("kind")
    return f.default if f is not None and isinstance(f.default, str) else None


def _keys_of(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _describe(err: dict[str, Any], root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, str | None, str | None]:
    """(message, expected, suggestion) for one pydantic error."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    last = next((el for el in reversed(loc) if isinstance(el, str) and el not in _UNION_TAGS), "")
    if kind == "extra_forbidden":
        owner = _model_at(root, loc[:-1])
        keys = _keys_of(owner) if owner else []
        return f"unknown key {loc[-1]!r}", ", ".join(keys) or None, nearest(str(loc[-1]), keys)
    if kind == "missing":
        return f"missing required field {loc[-1]!r}", None, None
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        kinds = KINDS_BY_KEY.get(last, ())
        got = ctx.get("tag") if kind == "union_tag_invalid" else (
            next(iter(value)) if isinstance(value, dict) and len(value) == 1 else None)
        allowed = " | ".join(kinds) if kinds else str(ctx.get("expected_tags", ""))
        form = f"one of {allowed} (a name, {{name: {{options}}}} or {{kind: name, ...}})"
        what = f"unknown kind {got!r}" if got is not None else f"cannot tell which kind of {last or 'value'} this is"
        return what, form, nearest(str(got), kinds) if got is not None else None
    if kind == "literal_error":
        options = re.findall(r"'([^']*)'|(\d+)", ctx.get("expected", ""))
        options = [a or b for a, b in options]
        return f"got {value!r}", ctx.get("expected"), nearest(str(value), options) if isinstance(value, str) else None
    if kind.endswith("_type") or kind in ("model_attributes_type",):
        base = kind.removesuffix("_type")
        return f"wrong type: got {type(value).__name__} {value!r}", _TYPE_NAMES.get(base, base), None
    if kind == "value_error":
        return str(ctx.get("error", err["msg"])), None, None
    return f"{err['msg']} (got {value!r})", None, None


def translate(err: ValidationError, data: Any, positions: Positions, root: type[BaseModel]) -> list[Problem]:
    """Problems for every error pydantic found, each placed in the file."""
    problems = []
    for e in err.errors():
        loc = tuple(e["loc"])
        msg_match = _AT.match(e["msg"]) if e["type"] == "value_error" else None
        if msg_match:
            loc = loc + tuple(int(p) if p.isdigit() else p for p in msg_match.group(1).split("."))
            message, expected, hint = msg_match.group(2), None, None
        else:
            message, expected, hint = _describe(e, root, loc)
        found, full = _walk(data, loc)
        key = e["type"] in ("extra_forbidden",)
        where = positions.at(found, key=key)
        dotted = ".".join(str(p) for p in full)
        problems.append(Problem(message, dotted, where, expected, hint))
    return problems
