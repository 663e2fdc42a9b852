"""Results of a benchmark run: environment, ratios to the peers and to the memory floor, files."""
from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from harness import Row

PACKAGES = ("torch", "triton", "fla-core", "titans-pytorch", "mirasdsl")
ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("mirasdsl", "kernels", "benchmarks")


def source_digest(root: Path = ROOT) -> str:
    """Short sha256 of every ``.py`` file under the source folders (path and content).

    A device's copy of ``.git`` may lag the working tree it runs; this digest names the code
    that actually ran (compare with ``python benchmarks/report.py --digest`` on a checkout).
    """
    h = hashlib.sha256()
    for folder in SOURCE_DIRS:
        for path in sorted((root / folder).rglob("*.py")):
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def kernels_digest() -> str:
    """Short sha256 of the ``.py`` files of the ``mirasdsl.kernels`` package that is imported:
    the repository's, or another commit's (``run_on_device.sh`` with BASELINE)."""
    try:
        import mirasdsl.kernels as mk
    except ImportError:
        return "not importable"
    root = Path(mk.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def environment() -> dict[str, Any]:
    """Device, versions, date and commit, for the record."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["torch"] = torch.__version__
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "python": platform.python_version(),
        "versions": versions,
        "commit": commit,
        "src": source_digest(),
        "kernels_src": kernels_digest(),
    }


def peer_of(rows: list[Row], row: Row) -> Row | None:
    """The peer row measured beside ``row`` (same family and shape, impl not ours)."""
    for other in rows:
        if other.family == row.family and other.shape == row.shape and other.impl != "ours":
            return other
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def add_ratios(rows: list[Row]) -> None:
    """Peer/ours time ratios (above 1: ours is faster) and our forward over the memory floor."""
    for row in rows:
        row.extra["fwd_over_floor"] = _ratio(row.fwd_ms, row.floor_ms)
        peer = peer_of(rows, row) if row.impl == "ours" else None
        if peer is not None:
            row.extra["peer_over_ours_fwd"] = _ratio(peer.fwd_ms, row.fwd_ms)
            row.extra["peer_over_ours_fwdbwd"] = _ratio(peer.fwdbwd_ms, row.fwdbwd_ms)


def _ms(x: float | None) -> str:
    return f"{x:.3f}" if x is not None else "-"


def _x(x: float | None) -> str:
    return f"{x:.2f}x" if x is not None else "-"


def _status(row: Row) -> str:
    if row.status != "ok":
        return f"{row.status}: {row.message[:90]}"
    if row.bwd_status not in ("ok", "not measured"):
        return f"bwd {row.bwd_status}: {row.message[:80]}"
    return "ok"


def markdown(rows: list[Row], env: dict[str, Any], ceilings: dict[str, float]) -> str:
    """The results as a markdown document (header with the environment, then one table)."""
    v = env["versions"]
    lines = [
        f"# Kernel benchmark, {env['date_utc']} UTC",
        "",
        f"Mode: {env.get('mode', 'measurement')}.",
        "",
        f"Device: {env['device']}; torch {v['torch']}, triton {v['triton']}, "
        f"fla-core {v['fla-core']}, titans-pytorch {v['titans-pytorch']}; commit {env['commit']}, src {env['src']}, "
        f"kernels {env['kernels_src']}.",
        "Times: medians of triton.testing.do_bench after warm-up, bf16 inputs. "
        "peer/ours above 1 means ours is faster. floor = inputs read once + output written once "
        "at the measured copy bandwidth.",
        "",
        "Ceilings measured in this run: "
        + ", ".join(f"{k} {val:.3g}" for k, val in ceilings.items()),
        "",
    ]
    return "\n".join(lines + table(rows)) + "\n"


def table(rows: list[Row]) -> list[str]:
    """The results table, one line per row."""
    lines = [
        "| family | shape | impl | fwd ms | fwd+bwd ms | peer/ours fwd | peer/ours fwd+bwd "
        "| fwd / floor | err vs PyTorch form | status | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        e = r.extra
        err = f"{e['rel_err']:.1e}" if e.get("rel_err") is not None else "-"
        lines.append(
            f"| {r.family} | {r.shape} | {r.impl} | {_ms(r.fwd_ms)} | {_ms(r.fwdbwd_ms)} "
            f"| {_x(e.get('peer_over_ours_fwd'))} | {_x(e.get('peer_over_ours_fwdbwd'))} "
            f"| {_x(e.get('fwd_over_floor'))} | {err} | {_status(r)} | {r.note} |")
    return lines


def write(out: Path, rows: list[Row], env: dict[str, Any], ceilings: dict[str, float]) -> None:
    """Write ``kernels.json`` and ``kernels.md`` under ``out`` (called after every row)."""
    add_ratios(rows)
    out.mkdir(parents=True, exist_ok=True)
    data = {"environment": env, "ceilings": ceilings, "rows": [r.to_json() for r in rows]}
    (out / "kernels.json").write_text(json.dumps(data, indent=1))
    (out / "kernels.md").write_text(markdown(rows, env, ceilings))


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--digest"]:
        sys.exit("usage: python benchmarks/report.py --digest")
    print(source_digest())
