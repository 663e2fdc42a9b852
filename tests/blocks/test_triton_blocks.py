"""Whole models on the Triton backend (interpreter on CPU) agree with the chunked PyTorch backend:
logits and every parameter gradient, relative RMS ≤ 1e-4 in fp32, at an odd length."""
from __future__ import annotations

import pytest
import torch

from mirasdsl.blocks import build_model
from tests.blocks.test_model import tiny
from tests.helpers import ROOT

PRESETS = ["gated-deltanet", "kda", "gla", "mamba2", "longhorn", "titans", "ttt-mlp"]


def run(model, tokens, backend, monkeypatch):
    monkeypatch.setenv("MIRAS_KERNELS", backend)
    model.zero_grad()
    logits = model(tokens)
    logits.square().mean().backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return logits.detach(), grads


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on CPU, conftest turns the interpreter on


@pytest.mark.parametrize("name", PRESETS)
def test_triton_backend_matches_chunk(name, monkeypatch):
    torch.manual_seed(0)
    spec = tiny(ROOT / "specs/presets" / f"{name}.yaml")
    model = build_model(spec).to(DEVICE)
    tokens = torch.randint(0, spec.model.vocab_size, (2, 37), device=DEVICE)
    ref_out, ref_grad = run(model, tokens, "chunk", monkeypatch)
    out, grad = run(model, tokens, "triton", monkeypatch)
    assert ((out - ref_out).norm() / ref_out.norm()) < 1e-4
    assert ((grad - ref_grad).norm() / ref_grad.norm()) < 1e-4
