"""benchmarks/make_baseline.sh lays out another commit's kernels for run_on_device.sh's BASELINE,
and the benchmark report names the kernel sources that ran."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
SCRIPT = os.path.join(ROOT, "benchmarks", "make_baseline.sh")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(shutil.which("git") is None or not os.path.isdir(os.path.join(ROOT, ".git")),
                    reason="needs git and a checkout")
def test_make_baseline_lays_out_a_commit() -> None:
    name = "pytest-head"
    try:
        done = run("HEAD", name)
        assert done.returncode == 0, done.stderr
        base = os.path.join(ROOT, ".baseline", name)
        for folder in ("mirasdsl", "kernels"):
            assert os.path.isdir(os.path.join(base, folder))
        assert os.path.isfile(os.path.join(base, "kernels", "delta", "chunk.py"))
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
        assert open(os.path.join(base, "COMMIT")).read() == head
    finally:
        shutil.rmtree(os.path.join(ROOT, ".baseline", name), ignore_errors=True)


def test_make_baseline_usage_errors_exit_2() -> None:
    done = run()
    assert done.returncode == 2 and "usage" in done.stderr
    done = run("not-a-commit-xyz")
    assert done.returncode == 2 and "not a commit" in done.stderr


def test_report_names_the_imported_kernels() -> None:
    import report

    digest = report.kernels_digest()
    assert len(digest) == 12 and all(c in "0123456789abcdef" for c in digest)
    assert report.environment()["kernels_src"] == digest
