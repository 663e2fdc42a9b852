"""Tiny search specs shared by the `miras search` tests (no tests here; imported by the others)."""
from __future__ import annotations

from pathlib import Path

import yaml

BASE = {
    "miras": 1, "name": "micro",
    "model": {"vocab_size": 64, "d_model": 16, "n_layers": 2, "heads": 2,
              "channel_mixer": {"kind": "swiglu", "hidden": 32}},
    "mixers": {"lin": {"preset": "gated-deltanet"}, "attn": {"preset": "transformer"}},
    "layout": {"ratio": {"lin": 1, "attn": 1}},
}


def search_data(**over: object) -> dict:
    """A search spec over the micro base: attention layers × the linear mixer's bias."""
    data = {
        "miras-search": 1,
        "base": "base.yaml",
        "space": {"layout.count.attn": {"int": [0, 2]}, "mixers.lin.bias": ["dot", "l2"]},
        "budget": {"params": 1.0e6},
        "objective": {"task": {"mqar": {"seq_len": 16, "kv_pairs": 2, "vocab_size": 16}},
                      "steps": 4, "batch_size": 4, "eval_every": 2, "eval_batches": 1,
                      "directions": {"accuracy": "maximize"}},
        "trials": 3,
        "sampler": "random",
        "seed": 0,
    }
    data.update(over)
    return data


def write_search(folder: Path, text: str | None = None, base: dict | None = None, **over: object) -> Path:
    """Write base.yaml and search.yaml into ``folder``; returns the search spec's path."""
    (folder / "base.yaml").write_text(yaml.safe_dump(base or BASE, sort_keys=False))
    path = folder / "search.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(search_data(**over), sort_keys=False))
    return path
