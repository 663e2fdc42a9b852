"""benchmarks/triton_cache.py: a Triton file cache moved to another folder is pointed at its new
place, slimmed to metadata and binaries, and its hits counted."""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

from triton_cache import HitCounter, groups, main, relocate, slim  # noqa: E402

FILES = ("k.json", "k.cubin", "k.ptx", "k.ttir", "k.ttgir", "k.llir", "k.source")


def _cache(root, made_at):
    """A cache of two kernels as Triton writes it at ``made_at``: group files with absolute paths."""
    for key in ("AAAA", "BBBB"):
        d = root / key
        d.mkdir(parents=True)
        for name in FILES:
            (d / name).write_text(name)
        paths = {name: str(made_at / key / name) for name in FILES}
        (d / "__grp__k.json").write_text(json.dumps({"child_paths": paths}))
    return root


def _children(group):
    return json.loads(group.read_text())["child_paths"]


def test_relocate_points_groups_at_their_own_folder(tmp_path):
    cache = _cache(tmp_path / "here", tmp_path / "elsewhere")
    assert relocate(cache) == 2
    for group in groups(cache):
        for name, path in _children(group).items():
            assert path == str(group.parent / name) and os.path.exists(path)
    assert relocate(cache) == 0  # already in place


def test_slim_keeps_metadata_and_binary(tmp_path):
    cache = _cache(tmp_path / "c", tmp_path / "c")
    removed, freed = slim(cache)
    assert removed == 2 * 5 and freed == 2 * sum(len(n) for n in FILES[2:])
    for group in groups(cache):
        assert sorted(_children(group)) == ["k.cubin", "k.json"]
        assert sorted(p.name for p in group.parent.iterdir()) == ["__grp__k.json", "k.cubin", "k.json"]


def test_hit_counter_reads_the_listener_flag():
    counter = HitCounter()
    for hit in (True, True, False):
        counter(src=None, metadata={}, metadata_group={}, times=None, cache_hit=hit)
    assert counter.line() == "triton kernels: 2 from the cache, 1 compiled here"


def test_cli_refuses_a_missing_folder(tmp_path, capsys):
    assert main(["relocate", str(tmp_path / "none")]) == 2
    assert "is not a folder" in capsys.readouterr().err
