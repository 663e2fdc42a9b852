"""Forward FLOPs measured by FlopCounterMode on the chunked path agree with the cost model.

What each side counts: both count matrix products only (2 FLOPs per multiply-add; convolutions as
products). The estimate counts softmax attention's causal half of the score matrix (what flash
kernels compute); the reference attention used here computes the full T×T square and masks it,
so the test adds the masked part to the estimate. The UT transform's triangular solve is not a
matrix product on either side.
"""
from __future__ import annotations

import functools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import mirasdsl.blocks.attention as attention_block
from mirasdsl.blocks import build_model
from mirasdsl.cost import Settings, estimate
from mirasdsl.cost.mixers import attended_keys
from mirasdsl.graph.nodes import MixerNode, ParallelMixerNode
from mirasdsl.kernels.attention import attention
from mirasdsl.spec.families import ATTENTION
from tests.blocks.test_model import SPECS, tiny

T = 128  # a multiple of every chunk size in the shipped specs


def masked_part(report) -> float:
    """FLOPs the full-square reference attention spends above the causal half the estimate counts."""
    extra = 0.0
    for node, _ in report.nodes:
        mixers = node.branches if isinstance(node, ParallelMixerNode) else (node,)
        for m in mixers:
            if isinstance(m, MixerNode) and m.family == ATTENTION:
                attended = attended_keys(T, m.mixer.memory.window)
                extra += 2.0 * m.heads * (m.proj_dim + m.value_dim) * (T - attended) * T
    return extra


@pytest.mark.parametrize("path", SPECS)
def test_forward_flops_match_estimate(path, monkeypatch):
    monkeypatch.setattr(attention_block, "attention", functools.partial(attention, backend="naive"))
    spec = tiny(path)
    model = build_model(spec)
    tokens = torch.randint(0, spec.model.vocab_size, (1, T))
    with FlopCounterMode(display=False) as counter:
        model(tokens)
    report = estimate(spec, Settings(context=T, seq_len=T))
    expected = report.total.fwd_flops * T + masked_part(report)
    assert counter.get_total_flops() == pytest.approx(expected, rel=0.02)
