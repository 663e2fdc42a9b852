"""Property: any mutation of a valid spec either compiles or fails as a located SpecError."""
from __future__ import annotations

import copy
import math

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirasdsl.cost import estimate
from mirasdsl.errors import SpecError
from mirasdsl.graph.lower import lower
from mirasdsl.spec import spec_from_text
from tests.helpers import MODEL_SPECS, run_cli

BASES = [yaml.safe_load(p.read_text()) for p in MODEL_SPECS]
WORDS = ["matrix", "matrx", "mlp", "softmax", "gated", "channel", "head", "l2", "dot", "lp", "huber", "kl",
         "gd", "gd_momentum", "exact", "implicit", "rope", "alibi", "none", "swiglu", "gdn", "attn", "silu",
         "transformer", "gla", "", "x" * 70, "ünïcödé", "1e3"]
VALUES = st.one_of(
    st.integers(min_value=-3, max_value=5000), st.sampled_from([0, 1, 2, 3, 10**12, -1]),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(), st.sampled_from(WORDS),
    st.lists(st.sampled_from(WORDS + [1, 2, 3]), max_size=4),
    st.dictionaries(st.sampled_from(WORDS), st.sampled_from(WORDS + [1, 0.5, None]), max_size=2),
)


def paths(data, prefix=()):
    """Every path to a value inside nested dicts/lists."""
    yield prefix
    if isinstance(data, dict):
        for k, v in data.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from paths(v, prefix + (i,))


def mutate(data, draw):
    all_paths = list(paths(data))
    path = draw(st.sampled_from(all_paths[1:]))
    parent = data
    for el in path[:-1]:
        parent = parent[el]
    op = draw(st.sampled_from(["replace", "delete", "add", "rename"]))
    key = path[-1]
    if op == "replace":
        parent[key] = draw(VALUES)
    elif op == "delete":
        del parent[key]
    elif op == "add" and isinstance(parent, dict):
        parent[draw(st.sampled_from(WORDS)) or "k"] = draw(VALUES)
    elif op == "rename" and isinstance(parent, dict):
        new = str(key)[:-1] + draw(st.sampled_from("aeiouxz_"))
        if new not in parent:
            parent[new] = parent.pop(key)


@st.composite
def mutated_specs(draw):
    data = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        mutate(data, draw)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def check(text: str) -> None:
    try:
        spec = spec_from_text(text, "mutant.yaml")
    except SpecError as err:
        assert err.problems or "mutant.yaml" in err.message, err.render()
        for p in err.problems:
            assert p.location is not None and p.location.file == "mutant.yaml"
            assert p.location.line is not None, p.render()
            assert p.message
        return
    report = estimate(lower(spec))
    assert report.total.params > 0
    assert math.isfinite(report.total.fwd_flops)


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated_specs())
def test_mutants_compile_or_fail_located(text):
    check(text)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated_specs())
def test_mutants_through_the_cli(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("m") / "mutant.yaml"
    path.write_text(text)
    proc = run_cli("compile", str(path))
    assert proc.returncode in (0, 2), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    if proc.returncode == 2:
        assert "mutant.yaml" in proc.stderr
