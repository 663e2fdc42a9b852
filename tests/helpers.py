"""Helpers shared by tests (imported as ``tests.helpers`` or via conftest's sys.path)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").rglob("*.yaml"))
MODEL_SPECS = [p for p in SPECS if "search" not in p.parts]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``miras`` as a user would, in a fresh process."""
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "mirasdsl", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=timeout, env=env)
