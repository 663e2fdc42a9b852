"""Invalid specs are refused with file:line:column, the dotted path, what is allowed and a hint."""
from __future__ import annotations

import re

import pytest

from mirasdsl.errors import SpecError
from mirasdsl.spec import spec_from_text
from tests.helpers import ROOT

BASE = (ROOT / "specs/gdn-hybrid.yaml").read_text()


def error_of(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        spec_from_text(text, "bad.yaml")
    return info.value


# (description, old, new, expected location "line:col", dotted path, message fragment, suggestion)
CASES = [
    ("misspelt key", "retention: {local: gated}", "retension: {local: gated}", "15:5",
     "mixers.gdn.retension", "unknown key", "retention"),
    ("misspelt kind", "memory: matrix", "memory: matrx", "13:13", "mixers.gdn.memory", "unknown kind", "matrix"),
    ("misspelt literal", "norm: rmsnorm", "norm: rmsnrom", "10:9", "model.norm", "got 'rmsnrom'", "rmsnorm"),
    ("out of range", "n_layers: 24", "n_layers: 0", "7:13", "model.n_layers", "greater than or equal to 1", None),
    ("wrong type", "d_model: 1024", "d_model: wide", "6:12", "model.d_model", "wrong type", None),
    ("string for int", "d_model: 1024", 'd_model: "1024"', "6:12", "model.d_model", "wrong type", None),
    ("bool for int", "n_layers: 24", "n_layers: true", "7:13", "model.n_layers", "wrong type", None),
    ("unknown preset", "preset: transformer", "preset: transfomer", "20:13", "mixers.attn.preset",
     "unknown preset", "transformer"),
    ("layout names unknown mixer", "ratio: {gdn: 3, attn: 1}", "ratio: {gdn: 3, atn: 1}", "23:24",
     "layout.ratio.atn", "unknown mixer", None),
    ("alibi on a linear mixer", "short_conv: 4,", "short_conv: 4, position: alibi,", "18:54",
     "mixers.gdn.features.position", "ALiBi", None),
    ("heads do not divide", "heads: 8", "heads: 7", "8:10", "model.heads", "not divisible", None),
    ("softmax with gd", "preset: transformer", "memory: softmax", "20:5", "mixers.attn.update", "exact", None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_located_error(case):
    _, old, new, where, path, fragment, hint = case
    assert old in BASE
    err = error_of(BASE.replace(old, new, 1))
    assert len(err.problems) >= 1
    p = err.problems[0]
    text = p.render()
    assert text.startswith(f"bad.yaml:{where}: {path}: "), text
    assert fragment in text
    if hint:
        assert p.suggestion == hint


def test_missing_field_points_at_parent():
    err = error_of(BASE.replace("  vocab_size: 32000\n", ""))
    assert err.problems[0].path == "model.vocab_size"
    assert "missing" in err.problems[0].message
    assert str(err.problems[0].location) == "bad.yaml:5:3"


@pytest.mark.parametrize("text, fragment", [
    ("a: !!python/object/apply:os.system [ls]", "not allowed"),
    ("miras: 1\nmiras: 1\n", "duplicate key"),
    ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n", "alias bomb"),
    ("", "empty"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("a: [1, 2\n", ""),
    ("<<: {a: 1}\n", "merge keys"),
    ("a: 1\n---\nb: 2\n", "exactly one YAML document"),
])
def test_hostile_yaml(text, fragment):
    err = error_of(text)
    assert fragment in err.render()
    assert re.search(r"bad\.yaml", err.render())


@pytest.mark.parametrize("mixer, fragment", [
    ("{memory: {mlp: {depth: 2}}, bias: l2, retention: {local: {gated: {granularity: channel}}}, update: gd}",
     "one decay per head"),
    ("{memory: vector, bias: dot, retention: {global: kl}, update: gd}", "simplex"),
    ("{memory: matrix, bias: dot, update: implicit}", "implicit"),
    ("{memory: matrix, bias: l2, features: {normalize: denominator}}", "denominator"),
    ("{memory: matrix, update: exact}", "softmax memory"),
    ("{memory: softmax, bias: l2, update: exact, features: {feature_map: elu1}}", "identity"),
    ("{memory: {mlp: {residual: true}}, bias: l2, value_dim: 32}", "value_dim"),
    ("{memory: {mlp: {depth: 2}}, bias: l2, update: {gd_momentum: {chunk: 60, step: 16}}}", "multiple of it"),
    ("{memory: {mlp: {depth: 2}}, bias: l2, update: {gd: {step: 4}}}", "needs a chunk"),
    ("{memory: {mlp: {depth: 2}}, bias: l2, retention: {global: {elastic_net: {l1: 0.1}}}, "
     "update: {gd: {chunk: 8, step: 4}}}", "elastic_net"),
])
def test_impossible_combinations(mixer, fragment):
    text = BASE.replace("  gdn:\n", f"  gdn: {mixer}\n  unused_gdn:\n", 1).replace("unused_gdn:", "zz_unused:")
    # keep the layout valid: the original gdn body now belongs to zz_unused, listed nowhere: drop it
    text = text.split("  zz_unused:")[0] + "  attn:" + text.split("  attn:")[1]
    err = error_of(text)
    assert fragment in err.render(), err.render()
    assert err.problems[0].path.startswith("mixers.gdn")
