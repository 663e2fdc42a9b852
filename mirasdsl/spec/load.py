"""Load a model spec: YAML → preset expansion → validated, frozen :class:`Spec`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mirasdsl.errors import Problem, SpecError
from mirasdsl.spec import axes, features
from mirasdsl.spec.base import tagged
from mirasdsl.spec.errors_map import translate
from mirasdsl.spec.layout import nearest
from mirasdsl.spec.model import Spec
from mirasdsl.spec.presets import PRESETS, deep_merge
from mirasdsl.spec.yamlio import Loaded, Positions, load_yaml_file, load_yaml_text


def normalise_mixer(data: dict[str, Any]) -> dict[str, Any]:
    """Rewrite a mixer's shorthands to ``{kind: ...}`` form, so overrides merge by kind."""
    out = dict(data)
    for key, kinds in axes.MIXER_AXES.items():
        if key in out:
            out[key] = tagged(out[key], kinds)
    ret = out.get("retention")
    if ret == "none":
        out["retention"] = {}
    elif isinstance(ret, dict):
        ret = dict(ret)
        if "local" in ret:
            ret["local"] = tagged(ret["local"], axes.LOCAL_KINDS)
        if "global" in ret:
            ret["global"] = tagged(ret["global"], axes.GLOBAL_KINDS)
        out["retention"] = ret
    feats = out.get("features")
    if isinstance(feats, dict) and "feature_map" in feats:
        out["features"] = {**feats, "feature_map": tagged(feats["feature_map"], features.FEATURE_MAP_KINDS)}
    if isinstance(out.get("branches"), dict):
        out["branches"] = {k: normalise_mixer(v) if isinstance(v, dict) else v for k, v in out["branches"].items()}
    return out


def _expand_one(name: str, mixer: Any, positions: Positions) -> Any:
    if not isinstance(mixer, dict) or "preset" not in mixer:
        return normalise_mixer(mixer) if isinstance(mixer, dict) else mixer
    preset_name = mixer["preset"]
    path = ("mixers", name, "preset")
    if not isinstance(preset_name, str) or preset_name not in PRESETS:
        raise SpecError("invalid spec", [Problem(
            f"unknown preset {preset_name!r}", "mixers." + name + ".preset", positions.at(path),
            "one of " + ", ".join(PRESETS) + " (see `miras list`)",
            nearest(str(preset_name), list(PRESETS)))])
    overrides = normalise_mixer({k: v for k, v in mixer.items() if k != "preset"})
    merged = deep_merge(normalise_mixer(PRESETS[preset_name].expand()), overrides)
    return {**merged, "preset": preset_name}


def expand_presets(data: Any, positions: Positions) -> Any:
    """Replace every ``{preset: name, ...}`` mixer by the preset's tuple with the overrides laid over it."""
    if not isinstance(data, dict) or not isinstance(data.get("mixers"), dict):
        return data
    mixers = {name: _expand_one(name, m, positions) for name, m in data["mixers"].items()}
    return {**data, "mixers": mixers}


def spec_from_loaded(loaded: Loaded) -> Spec:
    """Validate loaded YAML data as a model spec. Raises :class:`SpecError` with located problems."""
    data = loaded.data
    if not isinstance(data, dict):
        raise SpecError("invalid spec", [Problem(
            f"the file holds {type(data).__name__}, expected a mapping with keys miras, name, model, mixers",
            location=loaded.positions.at(()))])
    expanded = expand_presets(data, loaded.positions)
    try:
        return Spec.model_validate(expanded)
    except ValidationError as err:
        raise SpecError("invalid spec", translate(err, expanded, loaded.positions, Spec)) from None


def load_spec(path: str | Path) -> Spec:
    """Read, validate and freeze a model spec file."""
    return spec_from_loaded(load_yaml_file(path))


def spec_from_text(text: str, source: str = "<string>") -> Spec:
    """Validate a model spec given as YAML text."""
    return spec_from_loaded(load_yaml_text(text, source))


def spec_from_data(data: dict[str, Any], source: str = "<data>") -> Spec:
    """Validate a model spec given as plain data (no positions: problems name the field path)."""
    return spec_from_loaded(Loaded(data, Positions(source)))
