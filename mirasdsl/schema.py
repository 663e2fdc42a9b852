"""JSON Schema of the spec language, extended so editors accept the shorthands the loader accepts."""
from __future__ import annotations

from typing import Any

from mirasdsl.spec.errors_map import KINDS_BY_KEY
from mirasdsl.spec.model import Spec
from mirasdsl.spec.presets import PRESETS


def _shorthands(kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {"type": "string", "enum": list(kinds), "description": "shorthand: the kind's name alone"},
        {"type": "object", "minProperties": 1, "maxProperties": 1, "propertyNames": {"enum": list(kinds)},
         "description": "shorthand: {kind_name: {options}}"},
    ]


def _patch(node: Any) -> None:
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict):
            for key, sub in props.items():
                if key in KINDS_BY_KEY:
                    props[key] = {"anyOf": [sub] + _shorthands(KINDS_BY_KEY[key]),
                                  "description": sub.get("description", "")}
                elif key == "retention":
                    props[key] = {"anyOf": [sub, {"const": "none"}], "description": sub.get("description", "")}
                elif key == "output_gate":
                    props[key] = {"anyOf": [sub, {"type": "boolean"}], "description": sub.get("description", "")}
                elif key == "preset":
                    props[key] = {"type": "string", "enum": list(PRESETS), "description": sub.get("description", "")}
        for value in node.values():
            _patch(value)
    elif isinstance(node, list):
        for value in node:
            _patch(value)


def spec_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a model spec file."""
    schema = Spec.model_json_schema(by_alias=True, mode="validation")
    _patch(schema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "mirasdsl model spec"
    return schema
