"""The wheel ships kernels/ and search/ inside the mirasdsl namespace, and nothing generic."""
from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile

import pytest

from tests.helpers import ROOT

MAPPED = {"mirasdsl": "mirasdsl", "mirasdsl.kernels": "kernels", "mirasdsl.search": "search"}


def packages_on_disk() -> set[str]:
    found = set()
    for prefix, folder in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([prefix, *rel.parts]) if rel.parts else prefix)
    return found


def test_every_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert packages_on_disk() == listed


@pytest.mark.slow
def test_wheel_installs_in_a_fresh_venv(tmp_path):
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"),
                    str(ROOT)], check=True, capture_output=True, text=True)
    wheel = next((tmp_path / "dist").glob("mirasdsl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "mirasdsl/kernels/dispatch.py" in names and "mirasdsl/search/__init__.py" in names
    assert not any(n.startswith(("kernels/", "search/")) for n in names)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    code = ("import importlib.util as u, mirasdsl.kernels, mirasdsl.search, mirasdsl;"
            "assert u.find_spec('kernels') is None and u.find_spec('search') is None;"
            "assert u.find_spec('mirasdsl.kernels.delta') is not None;"
            "print(mirasdsl.kernels.__file__)")
    out = subprocess.run([str(py), "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path).stdout
    assert str(venv) in out
