"""Proxy tasks: determinism, split separation, the structure of every task, the LM corpus and
the registry's errors."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mirasdsl.errors import TaskError, UserError
from mirasdsl.search.tasks import (IGNORE, TASKS, CompressionConfig, FuzzyRecallConfig,
                                   InContextRecallConfig, LMConfig, MemorizationConfig,
                                   MQARConfig, NoisyRecallConfig, SelectiveCopyingConfig,
                                   make_task, rng_for, task_params)
from mirasdsl.search.tasks.base import row_permutations
from mirasdsl.search.tasks.lm import corpus_files, load_splits, stdlib_root

SMALL = {  # quick settings of every task
    "mqar": dict(seq_len=48, kv_pairs=6, vocab_size=64),
    "in_context_recall": dict(seq_len=40, vocab_size=16),
    "fuzzy_recall": dict(seq_len=48, vocab_size=16),
    "noisy_recall": dict(seq_len=40, vocab_size=32, noise_vocab_size=16, frac_noise=0.3),
    "selective_copying": dict(seq_len=41, vocab_size=12, num_tokens_to_copy=6),
    "compression": dict(seq_len=33, data_vocab=10),
    "memorization": dict(seq_len=24, vocab_size=64),
    "lm": dict(seq_len=48),
}


def rows(batch: tuple[torch.Tensor, torch.Tensor]) -> list[tuple[list[int], list[int]]]:
    inputs, targets = batch
    return list(zip(inputs.tolist(), targets.tolist()))


# ---------------------------------------------------------------- registry, shapes, determinism


def test_registry_names() -> None:
    assert set(TASKS) == {"mqar", "in_context_recall", "fuzzy_recall", "noisy_recall",
                          "selective_copying", "compression", "memorization", "lm"}
    assert set(SMALL) == set(TASKS)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_batches_are_well_formed_and_deterministic(name: str) -> None:
    task = make_task(name, **SMALL[name])
    inputs, targets = task.batch("train", 3, 16, seed=11)
    assert inputs.dtype == targets.dtype == torch.long
    assert inputs.shape == targets.shape == (16, task.seq_len)
    assert 0 <= int(inputs.min()) and int(inputs.max()) < task.vocab_size
    scored = targets[targets != IGNORE]
    assert scored.numel() > 0 and int(scored.min()) >= 0 and int(scored.max()) < task.vocab_size
    assert (targets != IGNORE).any(dim=1).all(), "every example has a scored position"
    again = task.batch("train", 3, 16, seed=11)
    assert torch.equal(inputs, again[0]) and torch.equal(targets, again[1])
    assert dataclasses.replace(task) == task and hash(task) == hash(make_task(name, **SMALL[name]))
    for other in (task.batch("train", 4, 16, 11), task.batch("train", 3, 16, 12),
                  task.batch("heldout", 3, 16, 11)):
        assert not torch.equal(inputs, other[0])


def test_task_configs_are_frozen() -> None:
    task = make_task("mqar")
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.kv_pairs = 3  # type: ignore[misc]


def test_split_seed_sequences_are_disjoint() -> None:
    train = rng_for(5, "train", 0).integers(0, 2**62, size=4)
    held = rng_for(5, "heldout", 0).integers(0, 2**62, size=4)
    assert not np.array_equal(train, held)
    with pytest.raises(ValueError):
        rng_for(5, "test", 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        rng_for(-1, "train", 0)


def test_mqar_train_and_heldout_examples_do_not_overlap() -> None:
    task = MQARConfig(seq_len=64, kv_pairs=8, vocab_size=128)
    train = {tuple(r) for i in range(20) for r in task.batch("train", i, 64, 0)[0].tolist()}
    held = {tuple(r) for i in range(4) for r in task.batch("heldout", i, 64, 0)[0].tolist()}
    assert len(train) == 20 * 64 and len(held) == 4 * 64
    assert not train & held


# ---------------------------------------------------------------------------------------- MQAR


def test_mqar_queries_recall_the_paired_value() -> None:
    task = MQARConfig(seq_len=48, kv_pairs=6, vocab_size=64)
    k, half = task.kv_pairs, task.vocab_size // 2
    for x, y in rows(task.batch("train", 0, 64, 0)):
        keys, values = x[0:2 * k:2], x[1:2 * k:2]
        assert len(set(keys)) == k and len(set(values)) == k
        assert all(1 <= key < half for key in keys) and all(half <= v < 64 for v in values)
        assert all(t == IGNORE for t in y[:2 * k])
        scored = [t for t in range(task.seq_len) if y[t] != IGNORE]
        assert len(scored) == k
        assert all((t - 2 * k) % 2 == 0 for t in scored)
        assert sorted(x[t] for t in scored) == sorted(keys), "each key is queried exactly once"
        for t in scored:
            assert y[t] == values[keys.index(x[t])]


def test_mqar_fillers_are_zero_without_random_non_queries() -> None:
    task = MQARConfig(seq_len=32, kv_pairs=4, vocab_size=32, random_non_queries=False)
    inputs, targets = task.batch("train", 0, 32, 0)
    tail, scored = inputs[:, 8:], targets[:, 8:] != IGNORE
    assert (tail[~scored] == 0).all() and (tail[scored] > 0).all()


def test_mqar_power_law_puts_queries_near_the_pairs() -> None:
    def mean_gap(power_a: float) -> float:
        task = MQARConfig(seq_len=128, kv_pairs=4, vocab_size=64, power_a=power_a)
        _, targets = task.batch("train", 0, 2000, 0)
        where = (targets != IGNORE).nonzero()[:, 1].double()
        return float(((where - 8) / 2).mean())

    slots = (128 - 8) // 2
    p = MQARConfig(seq_len=128, kv_pairs=4, vocab_size=64).gap_probabilities()
    assert p.shape == (slots,) and np.isclose(p.sum(), 1.0) and np.all(np.diff(p) < 0)
    uniform = mean_gap(1.0)
    assert abs(uniform - (slots - 1) / 2) < 1.5  # a = 1: uniform over the slots
    assert mean_gap(0.01) < 0.7 * uniform


def test_mqar_rejects_impossible_settings() -> None:
    with pytest.raises(TaskError) as err:
        MQARConfig(seq_len=16, kv_pairs=8, vocab_size=12)
    paths = {p.path for p in err.value.problems}
    assert paths == {"seq_len", "vocab_size"}
    with pytest.raises(TaskError, match="power_a"):
        make_task("mqar", power_a=0.0)


# ------------------------------------------------------------------------------------ MAD recall


def check_recall_rows(x: list[int], y: list[int], keys: range, values: range) -> int:
    """Pair-structured recall: a key's value is scored exactly when the key was seen in an
    earlier real pair, and the target is that value. Returns the number of scored pairs."""
    table: dict[int, int] = {}
    count = 0
    for t in range(0, len(x), 2):
        key, value = x[t], x[t + 1]
        assert y[t + 1] == IGNORE
        if key not in keys:  # a noise pair
            assert value not in keys and value not in values and y[t] == IGNORE
            continue
        assert value in values
        if key in table:
            assert table[key] == value and y[t] == value
            count += 1
        else:
            assert y[t] == IGNORE
            table[key] = value
    assert y[-2] != IGNORE, "the last pair always repeats a key"
    return count


def test_in_context_recall_structure() -> None:
    task = InContextRecallConfig(seq_len=40, vocab_size=16)
    for x, y in rows(task.batch("heldout", 0, 64, 2)):
        assert check_recall_rows(x, y, range(0, 8), range(8, 16)) >= 1


def test_noisy_recall_structure_and_noise_rate() -> None:
    task = NoisyRecallConfig(seq_len=64, vocab_size=32, noise_vocab_size=16, frac_noise=0.3)
    inputs, targets = task.batch("train", 0, 400, 0)
    for x, y in rows((inputs, targets)):
        check_recall_rows(x, y, range(0, 8), range(8, 16))
    noise_pairs = (inputs[:, 0::2] >= 16).double().mean()
    assert abs(float(noise_pairs) - 0.3 * 30 / 32) < 0.03  # two pairs per row are always real


def segment(x: list[int], pad: int, half: int) -> list[tuple[list[int], int, list[int]]]:
    """Split a fuzzy-recall row into (key motif, index of its last token, value motif)."""
    t = x.count(pad)
    assert x[:t] == [pad] * t, "padding is on the left only"
    pairs = []
    while t < len(x):
        start = t
        while x[t] < half:
            t += 1
        end_key = t - 1
        while t < len(x) and half <= x[t] < 2 * half:
            t += 1
        pairs.append((x[start:end_key + 1], end_key, x[end_key + 1:t]))
    return pairs


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_fuzzy_recall_structure(split: str) -> None:
    task = FuzzyRecallConfig(seq_len=48, vocab_size=16, k_motif_size=3, v_motif_size=3)
    half = 7
    key_sizes = set()
    for x, y in rows(task.batch(split, 0, 64, 1)):  # type: ignore[arg-type]
        pairs = segment(x, task.pad_token, half)
        assert len(pairs) >= 2
        table: dict[tuple[int, ...], list[int]] = {}
        expected = [IGNORE] * len(x)
        for key, end, value in pairs:
            assert 1 <= len(key) <= 3 and 1 <= len(value) <= 3
            assert len(set(key)) == len(key) and len(set(value)) == len(value)
            key_sizes.add(len(key))
            if tuple(key) in table:  # from the key's last token on, predict the value
                assert table[tuple(key)] == value
                expected[end:end + len(value)] = value
            table.setdefault(tuple(key), value)
        assert y == expected
        assert y[-1] == IGNORE and y[-2] != IGNORE, "the last value is always recalled"
    assert key_sizes == ({3} if split == "heldout" else {1, 2, 3})


def test_fuzzy_recall_rejects_small_sizes() -> None:
    with pytest.raises(TaskError) as err:
        FuzzyRecallConfig(seq_len=8, vocab_size=6, k_motif_size=3, v_motif_size=3)
    assert {p.path for p in err.value.problems} == {"seq_len", "vocab_size"}


# ------------------------------------------------------------------------------ MAD copy & co.


def test_selective_copying_structure() -> None:
    task = SelectiveCopyingConfig(seq_len=41, vocab_size=12, num_tokens_to_copy=6)
    blank, copy, m = 10, 11, 6
    for x, y in rows(task.batch("train", 0, 64, 0)):
        cut = len(x) - m - 1
        data = [tok for tok in x[:cut] if tok != blank]
        assert len(data) == m and all(tok < 10 for tok in data)
        assert x[cut] == copy and x[cut + 1:] == [blank] * m
        assert y[:cut + 1] == [IGNORE] * (cut + 1) and y[cut + 1:] == data
    with pytest.raises(TaskError, match="seq_len") as err:
        SelectiveCopyingConfig(seq_len=12, num_tokens_to_copy=6)
    assert "2 * num_tokens_to_copy + 1 = 13" in err.value.render()


def test_compression_structure() -> None:
    task = CompressionConfig(seq_len=33, data_vocab=10)
    p = task.prefix_len
    assert p == 16 and task.vocab_size == 10 + 1 + 16
    for x, y in rows(task.batch("heldout", 0, 64, 0)):
        assert all(tok < 10 for tok in x[:p]) and x[p] == task.compress_token
        cues = [tok - 11 for tok in x[p + 1:]]
        assert len(cues) == 16 and sorted(cues) == list(range(16)), "every position asked once"
        assert y[:p + 1] == [IGNORE] * (p + 1)
        assert y[p + 1:] == [x[c] for c in cues]
    even = CompressionConfig(seq_len=32, data_vocab=10)
    x, y = even.batch("train", 0, 8, 0)
    assert (y != IGNORE).sum(dim=1).tolist() == [15] * 8  # P = 16, Q = 15 distinct positions


def test_memorization_uses_one_fixed_map() -> None:
    task = MemorizationConfig(seq_len=24, vocab_size=64)
    value_of = task.value_of()
    assert sorted(value_of.tolist()) == list(range(31, 62)), "a bijection onto the values"
    for split in ("train", "heldout"):
        for x, y in rows(task.batch(split, 0, 32, 9)):  # type: ignore[arg-type]
            assert x[1::2] == [63] * 12 and y[0::2] == [IGNORE] * 12
            assert y[1::2] == [int(value_of[k]) for k in x[0::2]]
    assert np.array_equal(MemorizationConfig(vocab_size=64).value_of(), value_of)
    assert not np.array_equal(MemorizationConfig(vocab_size=64, map_seed=1).value_of(), value_of)


# ------------------------------------------------------------------------------------ LM corpus


def test_lm_default_corpus_is_the_stdlib_source() -> None:
    files = corpus_files(None, None)
    root = stdlib_root()
    assert len(files) > 100 and list(files) == sorted(files)
    assert all(f.suffix == ".py" and root in f.parents for f in files)
    assert not any("site-packages" in f.parts for f in files)
    train, held = load_splits(None, None, 0.1, 65)
    assert 0.05 < len(held) / (len(train) + len(held)) < 0.2
    task = LMConfig(seq_len=64)
    inputs, targets = task.batch("train", 0, 8, 0)
    assert task.vocab_size == 256 and (targets != IGNORE).all()
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    text = task.batch("train", 1, 64, 0)[0].flatten()
    printable = ((text >= 32) & (text < 127)) | (text == 10)
    assert float(printable.double().mean()) > 0.95, "windows of Python source are mostly ASCII"


def test_lm_custom_file_splits_by_offset(tmp_path) -> None:
    text = bytes(range(32, 127)) * 20  # 1900 bytes
    path = tmp_path / "corpus.txt"
    path.write_bytes(text)
    task = make_task("lm", path=str(path), seq_len=16, heldout_fraction=0.2)
    assert bytes(task.split_bytes("train")) == text[:1520]
    assert bytes(task.split_bytes("heldout")) == text[1520:]
    for split, part in (("train", text[:1520]), ("heldout", text[1520:])):
        inputs, targets = task.batch(split, 0, 32, 3)  # type: ignore[arg-type]
        for x, y in rows((inputs, targets)):
            assert bytes(x + y[-1:]) in part


def test_lm_directory_splits_by_file(tmp_path) -> None:
    for i in range(10):
        (tmp_path / f"f{i}.txt").write_bytes(bytes([65 + i]) * 100)
    (tmp_path / ".hidden").write_bytes(b"z" * 100)
    (tmp_path / "empty.txt").write_bytes(b"")
    task = LMConfig(path=str(tmp_path), seq_len=8, heldout_fraction=0.2)
    assert len(corpus_files(str(tmp_path), None)) == 10
    held = bytes(task.split_bytes("heldout"))
    train = bytes(task.split_bytes("train"))
    assert held == b"E" * 100 + b"J" * 100  # files 4 and 9: floor(0.2 (i + 1)) steps up
    assert len(train) == 800 and b"E" not in train and b"J" not in train
    only_b = LMConfig(path=str(tmp_path), pattern="f1.*", seq_len=8)
    assert set(bytes(only_b.split_bytes("train"))) == {66}


def test_lm_errors_for_missing_empty_and_tiny_corpora(tmp_path) -> None:
    with pytest.raises(TaskError, match="does not exist") as err:
        make_task("lm", path=str(tmp_path / "nope"))
    assert isinstance(err.value, UserError) and err.value.problems[0].path == "path"
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(TaskError, match="is empty"):
        LMConfig(path=str(empty))
    (tmp_path / "sub").mkdir()
    with pytest.raises(TaskError, match="no non-empty file"):
        LMConfig(path=str(tmp_path / "sub"))
    tiny = tmp_path / "tiny.txt"
    tiny.write_bytes(b"x" * 100)
    with pytest.raises(TaskError, match="too small"):
        LMConfig(path=str(tiny), seq_len=64).batch("train", 0, 1, 0)


# ------------------------------------------------------------------------------ registry errors


@pytest.mark.parametrize("name, params, field", [
    ("in_context_recall", dict(seq_len=41), "seq_len"),
    ("in_context_recall", dict(vocab_size=3), "vocab_size"),
    ("noisy_recall", dict(vocab_size=18, noise_vocab_size=16), "vocab_size"),
    ("noisy_recall", dict(frac_noise=1.0), "frac_noise"),
    ("noisy_recall", dict(noise_vocab_size=0), "noise_vocab_size"),
    ("fuzzy_recall", dict(k_motif_size=0), "k_motif_size"),
    ("selective_copying", dict(vocab_size=2), "vocab_size"),
    ("compression", dict(data_vocab=0), "data_vocab"),
    ("compression", dict(seq_len=2), "seq_len"),
    ("memorization", dict(seq_len=0), "seq_len"),
    ("memorization", dict(map_seed=-1), "map_seed"),
    ("lm", dict(heldout_fraction=1.0), "heldout_fraction"),
    ("mqar", dict(kv_pairs=0), "kv_pairs"),
])
def test_invalid_settings_name_their_field(name: str, params: dict, field: str) -> None:
    with pytest.raises(TaskError, match=field) as err:
        make_task(name, **params)
    assert field in {p.path for p in err.value.problems}



def test_unknown_task_lists_names_and_suggests() -> None:
    with pytest.raises(TaskError, match="unknown task 'mqr'") as err:
        make_task("mqr")
    (problem,) = err.value.problems
    assert problem.suggestion == "mqar" and "selective_copying" in (problem.expected or "")
    assert "did you mean 'mqar'?" in err.value.render()
    assert make_task("Fuzzy-Recall") == FuzzyRecallConfig()


def test_unknown_setting_suggests_the_nearest() -> None:
    with pytest.raises(TaskError, match="kv_pair") as err:
        make_task("mqar", kv_pair=4, seq_len=64)
    (problem,) = err.value.problems
    assert problem.path == "kv_pair" and problem.suggestion == "kv_pairs"
    assert "power_a" in (problem.expected or "")


def test_bad_types_are_task_errors() -> None:
    with pytest.raises(TaskError) as err:
        make_task("mqar", seq_len="64", random_non_queries=1)
    assert {p.path for p in err.value.problems} == {"seq_len", "random_non_queries"}
    assert make_task("mqar", power_a=1).power_a == 1  # an int is a fine float
    assert task_params("mqar")["kv_pairs"] == 8


def test_row_permutations_match_a_full_argsort() -> None:
    for size, k in ((50, 5), (7, 7), (9, 1)):
        got = row_permutations(np.random.default_rng(3), 200, size, k)
        want = np.argsort(np.random.default_rng(3).random((200, size)), axis=1)[:, :k]
        assert np.array_equal(got, want)
        assert all(len(set(r)) == k for r in got.tolist())
