"""The spec language: frozen pydantic models of the Miras axes, presets, safe loading.

Validating a file needs no torch.
"""
from mirasdsl.spec.layout import resolve_layout
from mirasdsl.spec.load import load_spec, spec_from_data, spec_from_text
from mirasdsl.spec.model import ParallelMixer, Spec, TupleMixer
from mirasdsl.spec.presets import PRESETS

__all__ = ["PRESETS", "ParallelMixer", "Spec", "TupleMixer", "load_spec", "resolve_layout",
           "spec_from_data", "spec_from_text"]
