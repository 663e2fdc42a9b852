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
