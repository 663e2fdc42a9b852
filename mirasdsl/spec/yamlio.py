"""Safe YAML loading that remembers where every key and value came from.

PyYAML's composer gives nodes with positions; we build plain Python data from them ourselves,
so no tag can construct an object, duplicate keys are refused, and alias expansion is bounded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mirasdsl.errors import Location, Problem, SpecError

MAX_NODES = 100_000  # total nodes after alias expansion ("billion laughs" guard)
MAX_DEPTH = 64
MAX_BYTES = 4 * 1024 * 1024

Path_ = tuple[Any, ...]  # a path into the data: keys (str) and list indices (int)

_SCALAR_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
}


@dataclass
class Positions:
    """Line/column of every value (and of every mapping key) in a loaded document."""

    file: str
    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def at(self, path: Path_, key: bool = False) -> Location:
        """Location of ``path`` (of its key when ``key``), or of the nearest ancestor known."""
        table = self.keys if key else self.values
        for cut in range(len(path), -1, -1):
            pos = table.get(tuple(path[:cut])) or self.values.get(tuple(path[:cut]))
            if pos:
                return Location(self.file, pos[0], pos[1])
        return Location(self.file)


@dataclass
class Loaded:
    """A loaded YAML document: plain data plus the positions of its parts."""

    data: Any
    positions: Positions


class _Builder:
    def __init__(self, source: str) -> None:
        self.source = source
        self.pos = Positions(source)
        self.count = 0

    def fail(self, node: yaml.Node, message: str, expected: str | None = None) -> SpecError:
        loc = Location(self.source, node.start_mark.line + 1, node.start_mark.column + 1)
        return SpecError("invalid YAML", [Problem(message, location=loc, expected=expected)])

    def build(self, node: yaml.Node, path: Path_, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise self.fail(node, f"document expands to more than {MAX_NODES} nodes (alias bomb?)")
        if depth > MAX_DEPTH:
            raise self.fail(node, f"nesting deeper than {MAX_DEPTH} levels")
        self.pos.values.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node)
        if isinstance(node, yaml.SequenceNode):
            self.check_tag(node, "tag:yaml.org,2002:seq")
            return [self.build(n, path + (i,), depth + 1) for i, n in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            self.check_tag(node, "tag:yaml.org,2002:map")
            return self.mapping(node, path, depth)
        raise self.fail(node, "unsupported YAML node")

    def check_tag(self, node: yaml.Node, tag: str) -> None:
        if node.tag != tag:
            raise self.fail(node, f"YAML tag {node.tag!r} is not allowed", "plain YAML data")

    def scalar(self, node: yaml.ScalarNode) -> Any:
        if node.tag not in _SCALAR_TAGS:
            raise self.fail(node, f"YAML tag {node.tag!r} is not allowed", "plain YAML data")
        return yaml.SafeLoader.yaml_constructors[node.tag](_SCALAR_LOADER, node)

    def mapping(self, node: yaml.MappingNode, path: Path_, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise self.fail(key_node, "YAML merge keys ('<<') are not supported")
            if not isinstance(key_node, yaml.ScalarNode):
                kind = "sequence" if isinstance(key_node, yaml.SequenceNode) else "mapping"
                raise self.fail(key_node, f"a {kind} cannot be a mapping key", "a string key")
            key = self.scalar(key_node)
            if not isinstance(key, str):
                raise self.fail(key_node, f"mapping key {key!r} is not a string", "a string key")
            if key in out:
                raise self.fail(key_node, f"duplicate key {key!r}")
            self.pos.keys[path + (key,)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = self.build(value_node, path + (key,), depth + 1)
        return out


_SCALAR_LOADER = yaml.SafeLoader("")


def load_yaml_text(text: str, source: str = "<string>") -> Loaded:
    """Parse one YAML document into plain data with positions. Raises :class:`SpecError`."""
    if len(text.encode("utf-8", "replace")) > MAX_BYTES:
        raise SpecError(f"{source}: file is larger than {MAX_BYTES} bytes")
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        loc = Location(source, mark.line + 1, mark.column + 1) if mark else Location(source)
        raise SpecError("invalid YAML", [Problem(str(err.problem or err), location=loc)]) from None
    except yaml.YAMLError as err:
        raise SpecError("invalid YAML", [Problem(str(err), location=Location(source))]) from None
    if not nodes:
        raise SpecError(f"{source}: the file is empty; expected a YAML mapping")
    if len(nodes) != 1:
        raise SpecError(f"{source}: expected exactly one YAML document, found {len(nodes)}")
    builder = _Builder(source)
    data = builder.build(nodes[0], (), 0)
    return Loaded(data, builder.pos)


def load_yaml_file(path: str | Path) -> Loaded:
    """Read and parse a YAML file; unreadable, special or oversized files raise :class:`SpecError`."""
    p = Path(path)
    try:
        if p.is_dir():
            raise SpecError(f"{p}: is a directory, expected a YAML file")
        if p.exists() and not p.is_file():
            raise SpecError(f"{p}: not a regular file (a device, pipe or socket); expected a YAML file")
        with p.open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(f"{p}: no such file") from None
    except OSError as err:
        raise SpecError(f"{p}: cannot read file ({err.strerror})") from None
    if len(raw) > MAX_BYTES:
        raise SpecError(f"{p}: file is larger than {MAX_BYTES} bytes; a spec is a small YAML file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(f"{p}: not UTF-8 text (byte {err.start})") from None
    return load_yaml_text(text, str(p))
