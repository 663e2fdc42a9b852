"""End-to-end: a whole model built from a spec by ``mirasdsl.blocks.build_model``.

Two models at the same size: the Gated DeltaNet + attention 3:1 hybrid of
``specs/gdn-hybrid.yaml`` and the same model with every layer softmax attention. Each is timed
forward (no autograd) and forward+backward of a cross-entropy loss on random tokens, under bf16
autocast with float32 weights. If the spec loader or ``build_model`` cannot be imported, the
rows say ``unavailable`` and the rest of the benchmark runs on.
"""
from __future__ import annotations

import copy
import importlib
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import cases
from harness import Prepared, Row, Timer, Unavailable, first_tensor, measure

ROOT = Path(__file__).resolve().parent.parent
HYBRID_SPEC = ROOT / "specs" / "gdn-hybrid.yaml"


def spec_variants() -> dict[str, dict[str, Any]]:
    """Spec data by name: the hybrid as written, and an all-attention model of the same size."""
    import yaml

    hybrid = yaml.safe_load(HYBRID_SPEC.read_text())
    attention = copy.deepcopy(hybrid)
    attention["name"] = f"{hybrid['name']}-all-attention"
    attention["mixers"] = {"attn": hybrid["mixers"]["attn"]}
    attention["layout"] = {"ratio": {"attn": 1}}
    return {"gdn-hybrid": hybrid, "all-attention": attention}


def _builders() -> tuple[Any, Any]:
    """``(spec_from_data, build_model)``, or :class:`Unavailable`."""
    try:
        spec_mod = importlib.import_module("mirasdsl.spec")
        blocks = importlib.import_module("mirasdsl.blocks")
        return spec_mod.spec_from_data, blocks.build_model
    except (ImportError, AttributeError) as exc:
        raise Unavailable(f"mirasdsl.blocks.build_model: {type(exc).__name__}: {exc}") from exc


def prepare_model(data: dict[str, Any], batch: int, seq_len: int) -> Prepared:
    """Build the model on the GPU and a call computing the mean token cross-entropy."""
    spec_from_data, build_model = _builders()
    print(f"end-to-end: building {data['name']} (B={batch}, T={seq_len})", flush=True)
    model = build_model(spec_from_data(data, source=str(HYBRID_SPEC))).to(cases.DEVICE)
    vocab = int(data["model"]["vocab_size"])
    g = torch.Generator(device=cases.DEVICE).manual_seed(0)
    tokens = torch.randint(0, vocab, (batch, seq_len), device=cases.DEVICE, generator=g)  # [B, T]
    targets = torch.randint(0, vocab, (batch, seq_len), device=cases.DEVICE, generator=g)

    def call() -> torch.Tensor:
        with torch.autocast(cases.DEVICE, dtype=torch.bfloat16):
            logits = first_tensor(model(tokens))  # [B, T, vocab]
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    return Prepared(fn=call, leaves=list(model.parameters()), floor_bytes=0)


def run_end_to_end(timer: Timer, seq_len: int = 16384, batch: int = 1) -> list[Row]:
    """One row per spec variant (``unavailable`` rows when the API is missing)."""
    rows = []
    try:
        variants = spec_variants()
    except Exception as exc:  # noqa: BLE001 - e.g. the spec file or PyYAML missing
        variants = {"gdn-hybrid": None, "all-attention": None}
        reason = f"{type(exc).__name__}: {exc}"
    for name, data in variants.items():
        row = Row(family="end_to_end", impl="ours", shape=f"B={batch},T={seq_len}",
                  dims={"B": batch, "T": seq_len}, note=name)
        if data is None:
            row.status, row.message = "unavailable", reason
        else:
            started = time.time()
            measure(row, lambda d=data: prepare_model(d, batch, seq_len), timer, None)
            row.extra["seconds"] = round(time.time() - started, 1)
            print(f"end-to-end: {name} {row.status} fwd {row.fwd_ms} ms, fwd+bwd "
                  f"{row.fwdbwd_ms} ms ({row.extra['seconds']} s)", flush=True)
            if row.fwd_ms:
                row.extra["fwd_tokens_per_s"] = batch * seq_len / (row.fwd_ms * 1e-3)
        rows.append(row)
    return rows
