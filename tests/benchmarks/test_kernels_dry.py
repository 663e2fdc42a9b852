"""benchmarks/kernels.py --dry-run: every family of ours builds and runs forward + backward at
tiny shapes on the CPU, so a GPU session's minutes are not spent finding a broken case."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import ROOT


def test_dry_run_times_every_family_of_ours(tmp_path):
    cmd = [sys.executable, "benchmarks/kernels.py", "--dry-run", "--impls", "ours", "--shapes", "S",
           "--no-e2e", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "kernels.json").read_text())["rows"]
    families = {r["family"] for r in rows}
    assert {"delta", "gla", "kda", "deep_memory_steps_c64", "deep_memory_block_steps_c64"} <= families
    bad = [(r["family"], r["status"], r["message"][:200]) for r in rows if r["status"] != "ok"]
    assert not bad, bad
    assert all(r["fwdbwd_ms"] > 0 for r in rows)
    checked = {r["family"]: r["extra"].get("rel_err") for r in rows}
    assert all(checked[f] is not None and checked[f] < 5e-3 for f in ("delta", "gla", "kda", "deep_memory_steps_c64"))


def test_agreement_measures_the_timed_op_against_its_reference():
    """harness.agreement: ours (output and every gradient) against the reference on float32
    copies of the same leaves; an op that computes something else shows."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from harness import Prepared, agreement

    x = torch.randn(3, 8).requires_grad_(True)
    w = torch.randn(8, 5).requires_grad_(True)
    right = Prepared(fn=lambda: x @ w, leaves=[x, w], reference=lambda L: L[0] @ L[1])
    assert agreement(right) < 1e-6
    wrong = Prepared(fn=lambda: x @ (w * 1.01), leaves=[x, w], reference=lambda L: L[0] @ L[1])
    assert 5e-3 < agreement(wrong) < 2e-2


def test_a_lost_cuda_context_stops_the_run_and_names_the_rest(tmp_path, monkeypatch):
    """An illegal memory access leaves the process's CUDA context unusable: kernels.py stops
    there, lists the cases not run, and writes the families a new process should run (exactly,
    the crashing one left out), which run_on_device.sh then runs."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import kernels

    def crash(s):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    first, second = kernels.PAIRS[0], kernels.PAIRS[3]  # simple_gla, gated_delta
    pairs = (first, kernels.Pair("delta", crash, "peer", crash), second)
    monkeypatch.setattr(kernels, "PAIRS", pairs)
    code = kernels.main(["--dry-run", "--impls", "ours", "--shapes", "S", "--out", str(tmp_path)])
    assert code == 0
    rows = json.loads((tmp_path / "kernels.json").read_text())["rows"]
    assert [(r["family"], r["status"]) for r in rows] == [("simple_gla", "ok"), ("delta", "error"),
                                                          ("gated_delta", "skipped")]
    assert rows[2]["message"].startswith(kernels.LOST + "delta S (ours)")
    assert (tmp_path / "rerun_families.txt").read_text() == "=gated_delta,=end_to_end"
    assert kernels.selected(second, "=gated_delta") and not kernels.selected(pairs[1], "=gated_delta")
