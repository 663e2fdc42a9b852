"""The miras command line, run as a user runs it (subprocess), error messages included."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT, run_cli

GDN = "specs/gdn-hybrid.yaml"


def test_compile_prints_table_layout_and_totals():
    proc = run_cli("compile", GDN)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "gated_delta_rule" in out and "softmax_attention" in out
    assert "layout (zero-based): gdn ×18: 0-2, 4-6" in out and "attn ×6: 3, 7, 11, 15, 19, 23" in out
    assert "total" in out and "KV @4,096" in out


def test_compile_json_matches_cost_model():
    proc = run_cli("compile", GDN, "--json", "--context", "8192")
    data = json.loads(proc.stdout)
    assert data["settings"]["context"] == 8192
    assert data["layout"][3] == "attn" and data["layout"][0] == "gdn"
    assert data["total"]["params"] == sum(n["params"] for n in data["nodes"])
    attn = next(g for g in data["groups"] if g["block"] == "attn")
    # 6 attention layers × 8 kv heads × (128 + 128) × 2 bytes × 8192 tokens
    assert attn["kv_bytes"] == 6 * 8 * 256 * 2 * 8192


def test_explain_and_emit(tmp_path):
    gj, gd = tmp_path / "g.json", tmp_path / "g.dot"
    proc = run_cli("compile", "specs/kda-hybrid.yaml", "--explain", "--emit", str(gj), "--emit", str(gd))
    assert proc.returncode == 0, proc.stderr
    assert "preset 'kda' expands" in proc.stdout
    assert "family: gated_delta_rule — because" in proc.stdout
    assert "kernel: gated_delta_rule via backend 'chunk'" in proc.stdout
    graph = json.loads(gj.read_text())
    assert graph["nodes"][0]["kind"] == "embedding" and graph["nodes"][-1]["kind"] == "head"
    assert any(n["kind"] == "mixer" and n["family"] == "softmax_attention" for n in graph["nodes"])
    assert gd.read_text().startswith('digraph "kda-hybrid-400m"')


def test_validate_schema_list():
    proc = run_cli("validate", GDN, "specs/presets/titans.yaml")
    assert proc.returncode == 0 and proc.stdout.count("ok:") == 2
    schema = json.loads(run_cli("schema").stdout)
    assert schema["title"] == "mirasdsl model spec" and "mixers" in schema["properties"]
    listing = run_cli("list").stdout
    for name in ("gated-deltanet", "titans", "memora", "based", "deep_memory"):
        assert name in listing
    data = json.loads(run_cli("list", "--json").stdout)
    assert len(data["presets"]) >= 20


@pytest.mark.parametrize("args, fragment", [
    (["compile", "specs/does-not-exist.yaml"], "no such file"),
    (["compile", GDN, "--context", "-5"], "positive integer"),
    (["compile", GDN, "--dtype", "fp8"], "invalid choice"),
    (["compile", GDN, "--emit", "g.png"], "unknown format"),
    (["compile", GDN, "--device", "tpu"], "unknown device"),
    (["compile", "specs"], "is a directory"),
    (["frobnicate"], "invalid choice"),
])
def test_user_errors_exit_2_without_traceback(args, fragment):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_spec_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / GDN).read_text().replace("memory: matrix", "memory: matrx"))
    proc = run_cli("compile", str(bad))
    assert proc.returncode == 2
    assert f"{bad}:13:13: mixers.gdn.memory: unknown kind 'matrx'" in proc.stderr
    assert "did you mean 'matrix'?" in proc.stderr


def test_compile_48_layers_stays_torch_free():
    """`miras compile` must not import torch (the design asks < 2 s per process; timed in benchmarks)."""
    proc = run_cli("compile", "specs/gdn-hybrid-48l.yaml")
    assert proc.returncode == 0
    proc = run_cli("compile", "specs/gdn-hybrid-48l.yaml", "--json")
    assert len(json.loads(proc.stdout)["layout"]) == 48
    code = "import sys, mirasdsl.cli, mirasdsl.commands; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_explain_names_the_kernel_per_device_and_override():
    proc = run_cli("compile", GDN, "--explain", "--device", "cuda")
    assert "kernel: gated_delta_rule via backend 'triton'" in proc.stdout
    assert "kernel: PyTorch SDPA" in proc.stdout
    import os
    env_proc = subprocess.run([sys.executable, "-m", "mirasdsl", "compile", GDN, "--explain", "--device", "cuda"],
                              capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "MIRAS_KERNELS": "naive", "COLUMNS": "200"})
    assert "via backend 'naive'" in env_proc.stdout
    bad = subprocess.run([sys.executable, "-m", "mirasdsl", "compile", GDN],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "MIRAS_KERNELS": "fast"})
    assert bad.returncode == 2 and "unknown kernel backend 'fast'" in bad.stderr


def test_run_trains_a_step_and_reports():
    proc = run_cli("run", "specs/tiny-gdn-hybrid.yaml", "--seq-len", "32", "--steps", "1")
    assert proc.returncode == 0, proc.stderr
    assert "tokens/s" in proc.stdout and "peak memory" in proc.stdout


@pytest.mark.parametrize("args, fragment", [
    (["run", "specs/tiny-gdn-hybrid.yaml", "--device", "cuda"], "no CUDA device"),
    (["run", "specs/tiny-gdn-hybrid.yaml", "--device", "banana"], "unknown device"),
    (["run", "specs/tiny-gdn-hybrid.yaml", "--seq-len", "0"], "positive integer"),
])
def test_run_user_errors(args, fragment):
    proc = run_cli(*args)
    assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("path, fragment", [("/dev/zero", "not a regular file"), ("/dev/null", "not a regular file")])
def test_special_files_are_refused(path, fragment):
    proc = run_cli("compile", path, timeout=30)
    assert proc.returncode == 2 and fragment in proc.stderr


def test_oversized_file_is_refused(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("a" * (5 * 1024 * 1024))
    proc = run_cli("compile", str(big))
    assert proc.returncode == 2 and "larger than" in proc.stderr


def test_unwritable_output_exits_2_without_traceback():
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "mirasdsl", "compile", GDN, "--explain"], stdout=full,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "cannot write output" in proc.stderr and "Traceback" not in proc.stderr
