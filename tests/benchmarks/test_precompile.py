"""benchmarks/precompile.py: kernels compiled on the CPU for an H100 stand-in land in Triton's
cache so that a later process (the device run) loads them, also from a copy elsewhere."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys

from tests.helpers import ROOT


def _precompile(cache, *extra):
    cmd = [sys.executable, "benchmarks/precompile.py", "--cache", str(cache), "--families", "simple_gla",
           "--shapes", "S", "--no-e2e", *extra]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_a_copied_cache_serves_every_kernel(tmp_path):
    first = _precompile(tmp_path / "made")
    assert first.startswith("triton kernels: 0 from the cache, ") and not first.endswith(" 0 compiled here")
    compiled = int(first.split(", ")[1].split()[0])
    tool = [sys.executable, "benchmarks/triton_cache.py"]
    scan = subprocess.run([*tool, "hazards", str(tmp_path / "made")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert scan.returncode == 0 and scan.stdout.startswith(f"{compiled} builds read, 0 with"), scan.stdout
    shutil.copytree(tmp_path / "made", tmp_path / "carried")
    shutil.rmtree(tmp_path / "made")  # the groups' absolute paths now point nowhere
    for action in ("slim", "relocate"):
        subprocess.run([*tool, action, str(tmp_path / "carried")], cwd=ROOT, check=True, timeout=60)
    again = _precompile(tmp_path / "carried")
    assert again == f"triton kernels: {compiled} from the cache, 0 compiled here"
    table = subprocess.run([*tool, "resources", str(tmp_path / "carried")], cwd=ROOT, capture_output=True,
                           text=True, timeout=300).stdout.splitlines()
    assert sum(int(line.split()[1]) for line in table) == compiled  # every kernel read back from its cubin
    assert all("spill-free; least" in line for line in table)


def test_device_build_key(tmp_path):
    """The build key takes the named library's hash in place of this build's, where Triton's
    cache reads it."""
    lib = tmp_path / "libtriton.so"
    lib.write_bytes(b"another build")
    code = ("import sys, pathlib; sys.path.insert(0, 'benchmarks'); import precompile;"
            "from triton.runtime import cache; before = cache.triton_key();"
            f"after = precompile.key_as_on_device(pathlib.Path({str(lib)!r}));"
            f"print(before != after, after == cache.triton_key(), {hashlib.sha256(b'another build').hexdigest()!r} in after)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["True", "True", "True"], done.stderr[-2000:]
