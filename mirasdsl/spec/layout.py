"""Resolve a layout (ratio, pattern or explicit indices) to one mixer name per layer, zero-based."""
from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from mirasdsl.spec.rules import fail

if TYPE_CHECKING:  # pragma: no cover
    from mirasdsl.spec.model import Spec


def nearest(word: str, choices: list[str] | tuple[str, ...]) -> str | None:
    """The closest valid choice to a misspelt word, if any is close."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return found[0] if found else None


def _known(spec: "Spec", name: str, path: str) -> None:
    if name not in spec.mixers:
        names = sorted(spec.mixers)
        hint = nearest(name, names)
        extra = f"; did you mean {hint!r}?" if hint else ""
        raise fail(path, f"unknown mixer {name!r} (defined: {', '.join(names)}){extra}")


def spread_counts(ratio: dict[str, int], n_layers: int) -> dict[str, int]:
    """Layer counts proportional to ``ratio`` summing to ``n_layers`` (largest remainder)."""
    total = sum(ratio.values())
    exact = {name: n_layers * r / total for name, r in ratio.items()}
    counts = {name: int(x) for name, x in exact.items()}
    left = n_layers - sum(counts.values())
    order = sorted(ratio, key=lambda n: (-(exact[n] - counts[n]), list(ratio).index(n)))
    for name in order[:left]:
        counts[name] += 1
    return counts


def _from_ratio(ratio: dict[str, int], n_layers: int) -> list[str]:
    """Spread the counts evenly: the most frequent mixer fills, the others sit at even strides.

    For ``{gdn: 3, attn: 1}`` over 8 layers this gives gdn, gdn, gdn, attn, gdn, gdn, gdn, attn:
    a minority mixer with c layers sits at indices ``floor((j + 1)·n/c) − 1``.
    """
    counts = spread_counts(ratio, n_layers)
    names = sorted((n for n in counts if counts[n]), key=lambda n: (-counts[n], list(ratio).index(n)))
    layers: list[str | None] = [None] * n_layers
    for name in names[1:]:
        c = counts[name]
        for j in range(c):
            i = (j + 1) * n_layers // c - 1
            while layers[i] is not None:  # collide with an earlier minority: next free slot back
                i = (i - 1) % n_layers
            layers[i] = name
    return [name if name is not None else names[0] for name in layers]


def _from_indices(spec: "Spec") -> list[str]:
    lay = spec.layout
    n = spec.model.n_layers
    layers: list[str | None] = [None] * n
    for name, idx in lay.indices.items():
        _known(spec, name, f"layout.indices.{name}")
        for i in idx:
            if i >= n:
                raise fail(f"layout.indices.{name}", f"layer index {i} is out of range: n_layers is {n} (indices 0..{n - 1})")
            if layers[i] is not None:
                raise fail(f"layout.indices.{name}", f"layer {i} is already given to mixer {layers[i]!r}")
            layers[i] = name
    default = lay.default
    if default is None:
        rest = [m for m in spec.mixers if m not in lay.indices]
        if None in layers and len(rest) != 1:
            raise fail("layout.default", "some layers are not listed in layout.indices: name the mixer for them "
                       f"with layout.default (one of {', '.join(sorted(spec.mixers))})")
        default = rest[0] if rest else None
    else:
        _known(spec, default, "layout.default")
    return [name if name is not None else default for name in layers]


def resolve_layout(spec: "Spec") -> list[str]:
    """One mixer name per layer (index = layer number, zero-based). Raises ValueError('[at ...]')."""
    n = spec.model.n_layers
    lay = spec.layout
    if lay is None:
        if len(spec.mixers) != 1:
            raise fail("layout", f"{len(spec.mixers)} mixers are defined: say how to stack them "
                       "with layout.ratio, layout.pattern or layout.indices")
        return [next(iter(spec.mixers))] * n
    if lay.ratio is not None:
        for name in lay.ratio:
            _known(spec, name, f"layout.ratio.{name}")
        layers = _from_ratio(lay.ratio, n)
        mentioned = set(lay.ratio)
    elif lay.pattern is not None:
        for i, name in enumerate(lay.pattern):
            _known(spec, name, f"layout.pattern.{i}")
        layers = [lay.pattern[i % len(lay.pattern)] for i in range(n)]
        mentioned = set(lay.pattern)
    else:
        layers = _from_indices(spec)
        mentioned = set(lay.indices) | {lay.default} | set(layers)
    unused = [m for m in spec.mixers if m not in mentioned]
    if unused:
        raise fail("mixers", f"mixer(s) {', '.join(unused)} defined but not used by the layout")
    return layers
