"""A Triton kernel cache that travels between machines: relocate it, slim it, count its hits.

Triton's file cache keeps one folder per compiled kernel, named by a hash of the kernel's source,
its specialisation, the compiler's options and the Triton build. Each folder has a group file
(``__grp__<name>.json``) that lists the kernel's files by **absolute** path, so a cache copied to
another folder (the GPU machine's ``/tmp/triton_cache``, a carried ``.triton_cache/``) misses on
every kernel until the paths are rewritten: :func:`relocate`. :func:`slim` keeps what loading a
kernel needs (its metadata and binary: ``.json``, ``.cubin``), not the intermediate IR, so a
cache fits the device tool's carry. :class:`HitCounter` counts, on the device, how many kernels
came from the cache and how many were compiled there.

    python benchmarks/triton_cache.py relocate DIR     # after copying a cache into DIR
    python benchmarks/triton_cache.py slim DIR
    python benchmarks/triton_cache.py resources DIR    # registers and spills of every kernel in it
    python benchmarks/triton_cache.py hazards DIR      # before slim: matmul results transposed in registers

``resources`` reads each cubin as the launches specialised it (``precompile.py``'s cache: the
benchmark's real shapes, so sizes and pointers divisible by 16 are known to the compiler, as on
the device), where ``kernels/compile_check.py`` compiles without those hints. ``hazards`` reads
each kernel's Triton GPU IR (so before ``slim``) for register transposes of matmul results
(``compile_check.mma_transposes``: what sm_90 builds of Triton 3.4-3.7.0 miscompiled in fla's
gated backward); with the hints the compiler lays tiles out differently, so this is where a
build the device will run shows it. Exit code 1 when any build has one.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

GROUP_PREFIX = "__grp__"
KEEP_SUFFIXES = (".json", ".cubin", ".hsaco")  # metadata and the loadable binary


def groups(cache: Path) -> list[Path]:
    """Every group file of the cache (one per compiled kernel)."""
    return sorted(cache.glob(f"*/{GROUP_PREFIX}*.json"))


def _children(group: Path) -> dict[str, str]:
    data = json.loads(group.read_text())
    return dict(data.get("child_paths") or {})


def _write(group: Path, children: dict[str, str]) -> None:
    group.write_text(json.dumps({"child_paths": children}))


def _beside(group: Path, names: object) -> dict[str, str]:
    """Each file name mapped to its path in the group file's own folder."""
    return {name: str(group.parent / name) for name in names}


def relocate(cache: Path) -> int:
    """Point every group file at the files beside it; returns how many groups were rewritten."""
    changed = 0
    for group in groups(cache):
        children = _children(group)
        moved = _beside(group, children)
        if moved != children:
            _write(group, moved)
            changed += 1
    return changed


def slim(cache: Path) -> tuple[int, int]:
    """Delete each kernel's intermediate files (IR, PTX, source), keep metadata and binary, and
    list only those in its group; returns ``(files removed, bytes removed)``."""
    removed = freed = 0
    for group in groups(cache):
        children = _children(group)
        kept = {n: p for n, p in children.items() if n.endswith(KEEP_SUFFIXES)}
        for name in set(children) - set(kept):
            path = group.parent / name
            if path.exists():
                freed += path.stat().st_size
                path.unlink()
                removed += 1
        _write(group, _beside(group, kept))
    return removed, freed


class HitCounter:
    """Triton compilation listener: how many kernels were loaded from the cache, how many compiled."""

    def __init__(self) -> None:
        self.hits = self.compiled = 0

    def __call__(self, *, cache_hit: bool, **_: object) -> None:
        if cache_hit:
            self.hits += 1
        else:
            self.compiled += 1

    def install(self) -> bool:
        """Listen to Triton's compilations (Triton 3.4 or newer); False where it cannot."""
        try:
            import triton

            triton.knobs.compilation.listener = self
            return True
        except (ImportError, AttributeError):
            return False

    def line(self) -> str:
        return f"triton kernels: {self.hits} from the cache, {self.compiled} compiled here"


def resource_lines(cache: Path) -> list[str]:
    """Per kernel name: its compiled variants (autotune candidates, gate modes, dtypes), how many
    keep every value in registers, and the least-spilling one's launch shape."""
    from mirasdsl.kernels.compile_check import resources

    by_name: dict[str, list[tuple[int, int, int, int]]] = {}
    for group in groups(cache):
        name = group.name[len(GROUP_PREFIX):-len(".json")]
        meta = json.loads((group.parent / f"{name}.json").read_text())
        cubin = group.parent / f"{name}.cubin"
        if not cubin.exists():
            continue
        _, stack = resources(cubin.read_bytes())
        by_name.setdefault(name, []).append((stack if stack is not None else -1, meta["num_warps"],
                                             meta["num_stages"], meta["shared"]))
    lines = []
    for name, variants in sorted(by_name.items()):
        variants.sort()
        free = sum(1 for v in variants if v[0] == 0)
        least = variants[0]
        lines.append(f"{name:28s} {len(variants):3d} variants, {free:3d} spill-free; least {least[0]} B/thread "
                     f"(warps {least[1]}, stages {least[2]}, shared {least[3]} B), most {variants[-1][0]} B")
    return lines


def hazard_lines(cache: Path) -> list[str]:
    """One line per kernel name with a build that transposes a matmul result in registers, then a
    last line with the count of builds read."""
    from mirasdsl.kernels.compile_check import mma_transposes

    found: dict[str, int] = {}
    builds = 0
    for ir in sorted(cache.rglob("*.ttgir")):
        builds += 1
        n = mma_transposes(ir.read_text())
        if n:
            found[ir.stem] = found.get(ir.stem, 0) + 1
    lines = [f"HAZARD {name}: {k} builds transpose a matmul result in registers" for name, k in sorted(found.items())]
    return lines + [f"{builds} builds read, {sum(found.values())} with register transposes of matmul results"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("relocate", "slim", "resources", "hazards"))
    p.add_argument("cache", type=Path)
    a = p.parse_args(argv)
    if not a.cache.is_dir():
        print(f"triton_cache.py: error: {a.cache} is not a folder", file=sys.stderr)
        return 2
    if a.action == "relocate":
        print(f"{a.cache}: {relocate(a.cache)} of {len(groups(a.cache))} kernels' paths rewritten")
    elif a.action == "resources":
        print("\n".join(resource_lines(a.cache)))
    elif a.action == "hazards":
        lines = hazard_lines(a.cache)
        print("\n".join(lines))
        return 1 if len(lines) > 1 else 0
    else:
        removed, freed = slim(a.cache)
        print(f"{a.cache}: {removed} intermediate files removed ({freed / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
