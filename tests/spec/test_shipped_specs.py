"""Every shipped spec validates, lowers, prices and is accepted by the JSON Schema."""
from __future__ import annotations

import jsonschema
import pytest
import yaml

from mirasdsl.cost import estimate
from mirasdsl.graph.lower import lower
from mirasdsl.schema import spec_schema
from mirasdsl.spec import PRESETS, load_spec, resolve_layout
from tests.helpers import MODEL_SPECS, ROOT


@pytest.mark.parametrize("path", MODEL_SPECS, ids=lambda p: str(p.relative_to(ROOT)))
def test_spec_validates_lowers_and_prices(path):
    spec = load_spec(path)
    g = lower(spec)
    layers = resolve_layout(spec)
    assert len(layers) == spec.model.n_layers
    mixer_nodes = [d["node"] for _, d in g.nodes(data=True) if d["node"].kind in ("mixer", "parallelmixer")]
    assert sorted(n.layer for n in mixer_nodes) == list(range(spec.model.n_layers))
    report = estimate(g)
    assert report.total.params > 0 and report.total.fwd_flops > 0


@pytest.mark.parametrize("path", MODEL_SPECS, ids=lambda p: str(p.relative_to(ROOT)))
def test_schema_accepts_shipped_spec(path):
    data = yaml.safe_load(path.read_text())
    jsonschema.validate(data, spec_schema())


def test_schema_rejects_unknown_top_level_key():
    data = yaml.safe_load((ROOT / "specs/gdn-hybrid.yaml").read_text())
    data["modle"] = {}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, spec_schema())


def test_every_preset_is_shipped_as_a_spec():
    shipped = {p.stem for p in (ROOT / "specs/presets").glob("*.yaml")}
    assert set(PRESETS) <= shipped


@pytest.mark.parametrize("name", ["gdn-hybrid", "kda-hybrid", "based-hybrid"])
def test_hybrids_shipped(name):
    spec = load_spec(ROOT / "specs" / f"{name}.yaml")
    assert len(set(resolve_layout(spec))) >= 2
