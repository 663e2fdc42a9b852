"""benchmarks/traffic.py counts the bytes Triton kernels load and store (under the interpreter)."""
from __future__ import annotations

import os
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="counts under Triton's CPU interpreter"
)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))


def test_counts_masked_loads_and_stores_exactly() -> None:
    import triton
    import triton.language as tl

    import traffic

    @triton.jit
    def halve(x, y, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(y + offs, (tl.load(x + offs, mask=offs < n) * 0.5).to(tl.bfloat16), mask=offs < n)

    x, y = torch.randn(64), torch.empty(64, dtype=torch.bfloat16)
    tally = traffic.Tally()
    with traffic.counting(tally):
        halve[(1,)](x, y, 37, BLOCK=64)
    assert tally.rows[("fwd", "halve")] == [1, 37 * 4, 37 * 2, 37 * 4, 37 * 2]  # fp32 in, bf16 out
    halve[(1,)](x, y, 37, BLOCK=64)  # counting ends with the block
    assert tally.rows[("fwd", "halve")][0] == 1
    by_arg = traffic.Tally(by_tensor=True)
    with traffic.counting(by_arg):
        halve[(1,)](x, y, 37, BLOCK=64)
    assert by_arg.rows[("fwd", "halve.x")][1:] == [37 * 4, 0, 37 * 4, 0]
    assert by_arg.rows[("fwd", "halve.y")][1:] == [0, 37 * 2, 0, 37 * 2]


def test_distinct_bytes_count_each_address_once_per_launch() -> None:
    """Every program of a launch re-reads the same 16 floats: counted 4 times, distinct once;
    a second launch counts them again (nothing is kept between launches)."""
    import triton
    import triton.language as tl

    import traffic

    @triton.jit
    def spread(x, y):
        offs = tl.arange(0, 16)
        tl.store(y + tl.program_id(0) * 16 + offs, tl.load(x + offs))

    x, y = torch.randn(16), torch.empty(64)
    tally = traffic.Tally()
    with traffic.counting(tally):
        spread[(4,)](x, y)
        spread[(4,)](x, y)
    assert tally.rows[("fwd", "spread")] == [2, 2 * 4 * 64, 2 * 256, 2 * 64, 2 * 256]


def test_delta_rule_writes_its_output_once() -> None:
    import cases
    import traffic

    cases.set_device("cpu")
    shape = cases.Shape("t", 1, 70, 2, 16)
    tally = traffic.Tally()
    inputs, out = traffic.count("delta", shape, tally)
    assert tally.rows[("fwd", "output_kernel")][2] == out == 70 * 2 * 16 * 2  # bf16 o, every token
    fwd = [row for (phase, _), row in tally.rows.items() if phase == "fwd"]
    counted, distinct = sum(r[1] + r[2] for r in fwd), sum(r[3] + r[4] for r in fwd)
    assert counted >= distinct > inputs + out  # never below the floor


def test_scaling_separates_per_token_and_fixed_bytes() -> None:
    """At the counting shape itself the scaled rows are the counts; a target with twice the
    tokens doubles the per-token part only."""
    import cases
    import traffic

    cases.set_device("cpu")
    tally = traffic.Tally()
    traffic.count("delta", cases.Shape("t", 1, 64, 1, 16), tally)
    rows, floors = traffic.at_target("delta", 64, cases.Shape("t", 1, 64, 1, 16))
    for key, (calls, *moved) in rows.items():
        assert calls == tally.rows[key][0] and moved == pytest.approx(tally.rows[key][1:])
    double, _ = traffic.at_target("delta", 64, cases.Shape("t", 2, 64, 1, 16))
    out = double[("fwd", "output_kernel")][2]
    assert out == pytest.approx(2 * rows[("fwd", "output_kernel")][2])


def _reader_kernel():
    """An autotuned kernel whose programs each re-read the whole of ``w``: the larger block
    (fewer programs) moves fewer bytes. The first candidate is the small block."""
    import triton
    import triton.language as tl

    @triton.autotune(configs=[triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 64})],
                     key=["n"])
    @triton.jit
    def scaled(x, w, y, n, W: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        total = tl.sum(tl.load(w + tl.arange(0, W)))
        tl.store(y + offs, tl.load(x + offs, mask=offs < n) * total, mask=offs < n)

    return scaled


@pytest.mark.parametrize("configs, block", [("first", 16), ("least", 64)])
def test_autotuned_kernels_run_the_chosen_candidate(configs: str, block: int) -> None:
    """``first`` keeps the first candidate, ``least`` the one with the fewest counted bytes; the
    autotuner's trial runs are not counted, and the result is the kernel's."""
    import triton

    import traffic

    kernel, n = _reader_kernel(), 128
    x, w, y = torch.randn(n), torch.randn(32), torch.empty(n)
    tally = traffic.Tally()
    with traffic.counting(tally, configs):
        kernel[lambda m: (triton.cdiv(n, m["BLOCK"]),)](x, w, y, n, W=32)
    programs = n // block
    assert tally.rows[("fwd", "scaled")][:3] == [1, (n + programs * 32) * 4, n * 4]
    assert tally.rows[("fwd", "scaled")][3:] == [(n + 32) * 4, n * 4]  # w once per launch
    torch.testing.assert_close(y, x * w.sum())


def test_peer_loop_counters_become_tensors() -> None:
    """A kernel calling a tensor method on a ``for`` counter (as fla's do) fails in the plain
    interpreter and runs once its module is registered; the result is unchanged."""
    import triton
    import triton.language as tl

    import interpret_peers

    def make():
        @triton.jit
        def offsets(y, N: tl.constexpr):
            for i in range(N):
                tl.store(y + i, i.to(tl.int64) * 3)
        return offsets

    y = torch.zeros(5, dtype=torch.int64)
    with pytest.raises(Exception, match="has no attribute 'to'"):
        make()[(1,)](y, N=5)
    interpret_peers.tensorize_loop_vars(__name__)
    make()[(1,)](y, N=5)
    assert y.tolist() == [0, 3, 6, 9, 12]


def test_prepare_fla_reports_an_h100(tmp_path, monkeypatch) -> None:
    """fla reads the device's shared memory and Hopper flag when its ops are imported; on the
    CPU both read as absent. prepare_fla makes them the H100's before that import."""
    import interpret_peers

    pkg = tmp_path / "fla" / "utils"
    pkg.mkdir(parents=True)
    (tmp_path / "fla" / "__init__.py").write_text("")
    (pkg / "hardware.py").write_text(
        "IS_NVIDIA_HOPPER = False\n"
        "def get_all_max_shared_mem():\n    return []\n"
        "def check_shared_mem(arch='none'):\n"
        "    try:\n        return get_all_max_shared_mem()[0] >= 232448\n"
        "    except IndexError:\n        return False\n")
    (pkg / "__init__.py").write_text(
        "from fla.utils.hardware import IS_NVIDIA_HOPPER, check_shared_mem\n"
        "is_nvidia_hopper = IS_NVIDIA_HOPPER\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    flas = lambda: [m for m in sys.modules if m == "fla" or m.startswith("fla.")]  # noqa: E731
    for name in flas():
        monkeypatch.delitem(sys.modules, name)
    try:
        interpret_peers.prepare_fla()
        import fla.utils

        assert fla.utils.check_shared_mem("hopper") and fla.utils.IS_NVIDIA_HOPPER
        assert fla.utils.is_nvidia_hopper and fla.utils.hardware.IS_NVIDIA_HOPPER
    finally:
        for name in flas():  # the fake package leaves no trace
            del sys.modules[name]


def test_missing_peer_is_a_usage_error() -> None:
    """Counting fla where it is not installed exits 2 with what to install, no traceback; a
    family the peer lacks is refused the same way."""
    import importlib.util
    import subprocess

    script = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "traffic.py")
    mixed = subprocess.run([sys.executable, script, "--families", "deep_memory_c64", "--impl",
                            "ours,fla"], capture_output=True, text=True)
    assert mixed.returncode == 2 and "run them separately" in mixed.stderr
    if importlib.util.find_spec("titans_pytorch") is None:
        titans = subprocess.run([sys.executable, script, "--families", "deep_memory_c64",
                                 "--impl", "ours,titans", "--T", "64"], capture_output=True, text=True)
        assert titans.returncode == 2 and "titans is not available" in titans.stderr
        assert "Traceback" not in titans.stderr
    if importlib.util.find_spec("fla") is not None:
        pytest.skip("fla is installed here")
    run = subprocess.run([sys.executable, script, "--families", "delta", "--impl", "fla"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "fla is not installed: pip install" in run.stderr
    assert "Traceback" not in run.stderr
