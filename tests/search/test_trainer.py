"""The proxy-task trainer: it learns MQAR with attention but not with a bag of tokens, is
deterministic on the CPU, follows its schedule, evaluates when told and fails loudly."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mirasdsl.errors import UserError
from mirasdsl.search.tasks import MQARConfig, make_task
from mirasdsl.search.trainer import (TrainingDiverged, TrainResult, evaluate, lr_factor,
                                     make_optimizer, masked_loss, train)

TINY = MQARConfig(seq_len=32, kv_pairs=4, vocab_size=32)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run far faster on one thread, above all on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TinyAttention(nn.Module):
    """Embedding of each token plus its predecessor, one causal softmax attention, a head:
    enough to look a key up and return the token that followed it."""

    def __init__(self, vocab: int, dim: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.prev = nn.Embedding(vocab, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        prev = F.pad(tokens, (1, 0))[:, :-1]  # [B, T] token before each position (0 first)
        h = self.embed(tokens) + self.prev(prev)  # [B, T, D]
        q, k, v = self.qkv(h).chunk(3, dim=-1)  # 3 x [B, T, D]
        return self.head(h + F.scaled_dot_product_attention(q, k, v, is_causal=True))


class BagOfTokens(nn.Module):
    """The current token and the mean of the prefix's embeddings: it knows which keys and values
    occurred but not which value went with which key, so it cannot do recall."""

    def __init__(self, vocab: int, dim: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, vocab))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)  # [B, T, D]
        count = torch.arange(1, tokens.shape[1] + 1, device=tokens.device).view(1, -1, 1)
        return self.mlp(torch.cat([x, x.cumsum(dim=1) / count], dim=-1))  # [B, T, V]


def fit(model: nn.Module, steps: int = 300, **kw: object) -> TrainResult:
    settings = dict(steps=steps, batch_size=32, lr=3e-3, warmup=30, eval_every=100,
                    eval_batches=4, seed=0, progress=False)
    settings.update(kw)
    return train(model, TINY, **settings)  # type: ignore[arg-type]


def seeded(cls: type[nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cls(TINY.vocab_size)


def test_attention_learns_mqar_and_a_bag_of_tokens_does_not() -> None:
    attention = fit(seeded(TinyAttention))
    bag = fit(seeded(BagOfTokens))
    assert attention.accuracy > 0.9, attention.history
    assert bag.accuracy < 0.45, bag.history  # about 1 / kv_pairs: a guess among the values
    assert attention.accuracy - bag.accuracy > 0.5
    assert attention.loss < 0.5 * bag.loss
    assert attention.history[-1].accuracy > attention.history[0].accuracy - 0.05
    assert attention.steps == 300 and attention.tokens == 300 * 32 * 32
    assert attention.seconds > 0 and [p.step for p in attention.history] == [100, 200, 300]


def test_training_is_deterministic_on_cpu() -> None:
    runs = []
    for _ in range(2):
        model = seeded(TinyAttention, seed=3)
        result = fit(model, steps=40, eval_every=20, seed=5)
        runs.append((result, [p.detach().clone() for p in model.parameters()]))
    (first, params_a), (second, params_b) = runs
    assert [(p.accuracy, p.loss, p.train_loss) for p in first.history] == \
        [(p.accuracy, p.loss, p.train_loss) for p in second.history]
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b))
    third = fit(seeded(TinyAttention, seed=3), steps=40, eval_every=20, seed=6)
    assert third.history[-1].train_loss != first.history[-1].train_loss  # other data


def test_on_eval_is_called_after_the_right_steps() -> None:
    calls: list[tuple[int, dict[str, float]]] = []
    result = fit(seeded(BagOfTokens), steps=25, eval_every=10, eval_batches=1,
                 on_eval=lambda step, metrics: calls.append((step, metrics)))
    assert [s for s, _ in calls] == [10, 20, 25] == [p.step for p in result.history]
    for (_, metrics), point in zip(calls, result.history):
        assert set(metrics) == {"accuracy", "loss"}
        assert 0.0 <= metrics["accuracy"] <= 1.0 and math.isfinite(metrics["loss"])
        assert metrics == {"accuracy": point.accuracy, "loss": point.loss}
    assert (result.accuracy, result.loss) == (calls[-1][1]["accuracy"], calls[-1][1]["loss"])
    assert [p.tokens for p in result.history] == [10 * 1024, 20 * 1024, 25 * 1024]
    only_end: list[int] = []
    fit(seeded(BagOfTokens), steps=7, eval_every=None, on_eval=lambda s, m: only_end.append(s))
    assert only_end == [7]


def test_exceptions_from_on_eval_propagate_and_stop_training() -> None:
    class Pruned(Exception):
        pass

    seen: list[int] = []

    def prune_at_20(step: int, metrics: dict[str, float]) -> None:
        seen.append(step)
        if step == 20:
            raise Pruned

    with pytest.raises(Pruned):
        fit(seeded(BagOfTokens), steps=50, eval_every=10, eval_batches=1, on_eval=prune_at_20)
    assert seen == [10, 20]


class NaNAfter(nn.Module):
    """A bag of tokens whose logits turn NaN from the ``bad``-th training forward on."""

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.inner, self.bad, self.calls = BagOfTokens(TINY.vocab_size), bad, 0

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls += self.training
        logits = self.inner(tokens)
        return logits * float("nan") if self.calls >= self.bad else logits


class NaNGradient(BagOfTokens):
    """Finite logits whose gradient is NaN: d/dp [0 * sqrt(p)] at p = 0 is 0 * inf."""

    def __init__(self) -> None:
        super().__init__(TINY.vocab_size)
        self.zero = nn.Parameter(torch.zeros(()))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return super().forward(tokens) + 0.0 * torch.sqrt(self.zero)


def test_nan_loss_raises_training_diverged_with_the_step() -> None:
    with pytest.raises(TrainingDiverged, match="step 4") as err:
        fit(NaNAfter(bad=4), steps=20, eval_every=5)
    assert err.value.step == 4 and math.isnan(err.value.value)
    assert isinstance(err.value, RuntimeError) and not isinstance(err.value, UserError)


def test_nan_gradient_raises_training_diverged() -> None:
    with pytest.raises(TrainingDiverged, match="gradient norm") as err:
        fit(NaNGradient(), steps=5)
    assert err.value.step == 1


def test_schedule_warms_up_linearly_then_decays_by_cosine() -> None:
    steps, warmup = 50, 10
    f = [lr_factor(s, steps, warmup, min_ratio=0.1) for s in range(steps)]
    assert f[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert f[warmup] == pytest.approx(1.0) and f[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(f[warmup:], f[warmup + 1:])), "strictly decreasing"
    middle = warmup + (steps - warmup - 1) / 2
    assert lr_factor(int(middle), steps, warmup) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * int(middle - warmup) / (steps - warmup - 1))))
    assert lr_factor(0, 1, 0) == 1.0 and lr_factor(0, 5, 0) == 1.0


def test_optimizer_follows_the_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []
    original = torch.optim.AdamW.step

    def record(self: torch.optim.AdamW, *args: object, **kw: object) -> object:
        seen.append(self.param_groups[0]["lr"])
        assert all(g["lr"] == seen[-1] for g in self.param_groups)
        return original(self, *args, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    fit(seeded(BagOfTokens), steps=12, warmup=4, lr=2e-3, eval_batches=1)
    assert seen == pytest.approx([2e-3 * lr_factor(s, 12, 4) for s in range(12)])


def test_gradients_are_clipped_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    limits: list[float] = []
    original = torch.nn.utils.clip_grad_norm_

    def record(params: object, max_norm: float, *args: object, **kw: object) -> torch.Tensor:
        limits.append(max_norm)
        return original(params, max_norm, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", record)
    fit(seeded(BagOfTokens), steps=3, grad_clip=0.25, eval_batches=1)
    assert limits == [0.25] * 3
    fit(seeded(BagOfTokens), steps=3, grad_clip=0.0, eval_batches=1)
    assert limits == [0.25] * 3


def test_weight_decay_only_on_matrices() -> None:
    model = BagOfTokens(8)
    optimizer = make_optimizer(model, lr=1e-3, weight_decay=0.1)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decayed["params"]) and all(p.ndim == 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_masked_loss_counts_only_scored_positions() -> None:
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[1, -100, 4], [-100, -100, 0]])
    total, count = masked_loss(logits, targets)
    picked = [logits[0, 0], logits[0, 2], logits[1, 2]]
    want = sum(-torch.log_softmax(row, dim=-1)[t] for row, t in zip(picked, [1, 4, 0]))
    assert int(count) == 3 and torch.allclose(total, want)


def test_evaluate_matches_the_last_history_point() -> None:
    model = seeded(TinyAttention)
    result = fit(model, steps=20, eval_batches=2)
    accuracy, loss = evaluate(model, TINY, batch_size=32, eval_batches=2, seed=0)
    assert accuracy == result.accuracy and loss == pytest.approx(result.loss, rel=1e-6)


def test_result_is_frozen_and_progress_bar_runs(capsys: pytest.CaptureFixture[str]) -> None:
    task = make_task("lm", seq_len=16)
    result = train(nn.Sequential(nn.Embedding(256, 16), nn.Linear(16, 256)), task, steps=3,
                   batch_size=4, lr=1e-3, seed=0, progress=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.accuracy = 1.0  # type: ignore[misc]
    assert "train lm" in capsys.readouterr().err


def test_bad_settings_and_models_are_rejected() -> None:
    with pytest.raises(ValueError, match="steps must be >= 1.*lr must be > 0"):
        train(BagOfTokens(32), TINY, steps=0, batch_size=2, lr=0.0, progress=False)
    with pytest.raises(ValueError, match="eval_every"):
        train(BagOfTokens(32), TINY, steps=2, batch_size=2, lr=1e-3, eval_every=0,
              progress=False)
    too_few_logits = nn.Sequential(nn.Embedding(32, 8), nn.Linear(8, 16))
    with pytest.raises(ValueError, match=r"\(2, 32, 16\).*vocabulary \(32\)"):
        train(too_few_logits, TINY, steps=2, batch_size=2, lr=1e-3, progress=False)


@pytest.mark.gpu
def test_attention_learns_mqar_on_cuda_in_bf16() -> None:
    result = fit(seeded(TinyAttention), device="cuda")
    assert result.accuracy > 0.9, result.history
