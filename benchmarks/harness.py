"""Timing harness for the GPU benchmarks: one measured row per (case, shape), never a crash.

Every measurement is a median of ``triton.testing.do_bench`` after explicit warm-up calls (the
first call of a Triton kernel compiles and autotunes). A case that raises is recorded with a
status instead of stopping the run:

- ``oom``: CUDA out of memory;
- ``refused``: the library declined on purpose (e.g. fla 0.6.0 refuses its gated chunk
  backward on Hopper with Triton 3.4–3.7.0, "produces incorrect results");
- ``unavailable``: the implementation cannot be imported (a peer wheel or our family missing);
- ``error``: anything else (the message is kept).

A case of ours may carry a ``reference`` (the same op by the PyTorch chunk form): after timing,
:func:`agreement` runs one forward + backward of the timed kernels (the launch shapes the
autotuner chose) and of the reference on float32 copies of the same inputs, and the row keeps
the largest relative RMS error over the output and every gradient (``extra["rel_err"]``), so a
time is never reported for a kernel that computed something else.
"""
from __future__ import annotations

import gc
import re
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

REFUSAL = re.compile(r"incorrect results|refus|not supported|unsupported|only supports|"
                     r"does not support|is not implemented", re.IGNORECASE)


@dataclass(frozen=True)
class Prepared:
    """A ready-to-time call: ``fn()`` runs the op; ``leaves`` get gradients in fwd+bwd."""

    fn: Callable[[], Any]
    leaves: list[torch.Tensor]
    floor_bytes: int = 0  # inputs read once + output written once (0: not meaningful)
    # the same op in PyTorch on float32 copies of ``leaves`` (in their order), or None
    reference: Callable[[list[torch.Tensor]], Any] | None = None


class Unavailable(Exception):
    """The implementation cannot be used here (import failed, API absent)."""


@dataclass
class Row:
    """One measured (or failed) case."""

    family: str
    impl: str  # "ours" or the peer's name
    shape: str
    dims: dict[str, int]
    status: str = "ok"  # ok | oom | refused | unavailable | error | skipped
    fwd_ms: float | None = None
    fwdbwd_ms: float | None = None
    bwd_status: str = "ok"
    floor_ms: float | None = None
    note: str = ""
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        return asdict(self)


def classify(exc: BaseException) -> str:
    """Status for an exception raised by a case."""
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return "oom"
    if isinstance(exc, (Unavailable, ImportError)):
        return "unavailable"
    if REFUSAL.search(str(exc)):
        return "refused"
    return "error"


def describe(exc: BaseException) -> str:
    """One-line description of an exception."""
    text = " ".join(str(exc).split())
    return text[:300] if isinstance(exc, Unavailable) else f"{type(exc).__name__}: {text[:300]}"


def free_memory() -> None:
    """Return cached blocks so one case's leftovers do not push the next one out of memory."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def first_tensor(out: Any) -> torch.Tensor:
    """The output tensor of an op that returns a tensor, a tuple ``(o, state)`` or a dict."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = out.get("logits", next(iter(out.values())))
        return first_tensor(out)
    return first_tensor(out[0])


@dataclass(frozen=True)
class Timer:
    """do_bench settings; ``warmup_calls`` untimed calls come first (compilation, autotuning)."""

    warmup_ms: int = 100
    rep_ms: int = 400
    warmup_calls: int = 3
    device: str = "cuda"  # "cpu": a dry run of the plumbing, timed with perf_counter

    def median_ms(self, fn: Callable[[], Any]) -> float:
        """Median time of ``fn`` in milliseconds."""
        for _ in range(self.warmup_calls):
            fn()
        if self.device != "cuda":
            times = []
            for _ in range(3):
                start = time.perf_counter()
                fn()
                times.append((time.perf_counter() - start) * 1e3)
            return sorted(times)[1]
        import triton.testing

        torch.cuda.synchronize()
        return float(triton.testing.do_bench(fn, warmup=self.warmup_ms, rep=self.rep_ms,
                                             return_mode="median"))


def time_forward(prep: Prepared, timer: Timer) -> float:
    """Forward only, without autograd."""
    def fwd() -> Any:
        with torch.no_grad():
            return prep.fn()
    return timer.median_ms(fwd)


def time_forward_backward(prep: Prepared, timer: Timer) -> float:
    """Forward, then backward of a fixed random output gradient into every leaf."""
    do = torch.randn_like(first_tensor(prep.fn()))

    def fwd_bwd() -> None:
        for x in prep.leaves:
            x.grad = None
        first_tensor(prep.fn()).backward(do)
    return timer.median_ms(fwd_bwd)


def _rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def agreement(prep: Prepared) -> float:
    """Largest relative RMS error of ``prep.fn`` (its output and every leaf's gradient, one
    forward + backward with a fixed bf16-representable cotangent) against ``prep.reference`` on
    float32 copies of the same leaves."""
    for x in prep.leaves:
        x.grad = None
    out = first_tensor(prep.fn())
    gen = torch.Generator(device=out.device).manual_seed(7)
    do = torch.randn(out.shape, generator=gen, device=out.device).to(out.dtype)
    out.backward(do)
    got = [out.detach()] + [x.grad for x in prep.leaves]
    copies = [x.detach().float().requires_grad_(x.requires_grad) for x in prep.leaves]
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference in float32 proper
    try:
        ref = first_tensor(prep.reference(copies))
        ref.float().backward(do.float())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    want = [ref.detach()] + [c.grad for c in copies]
    return max(_rel_rms(a, b) for a, b in zip(got, want) if a is not None and b is not None)


def measure(row: Row, make: Callable[[], Prepared], timer: Timer, copy_tb_s: float | None,
            backward: bool = True) -> Row:
    """Fill ``row`` with the times of ``make()``'s op, or with why there are none."""
    started = time.time()
    try:
        prep = make()
        if copy_tb_s and prep.floor_bytes:
            row.floor_ms = prep.floor_bytes / (copy_tb_s * 1e12) * 1e3
        row.fwd_ms = time_forward(prep, timer)
        if backward:
            try:
                row.fwdbwd_ms = time_forward_backward(prep, timer)
                if prep.reference is not None:
                    row.extra["rel_err"] = agreement(prep)
            except Exception as exc:  # noqa: BLE001 - every failure is a result here
                row.bwd_status, row.message = classify(exc), describe(exc)
        else:
            row.bwd_status = "not measured"
    except Exception as exc:  # noqa: BLE001
        row.status, row.message = classify(exc), describe(exc)
        if row.status == "error":
            traceback.print_exc(limit=4)
    finally:
        prep = None
        free_memory()
    row.extra["seconds"] = round(time.time() - started, 1)
    return row


def copy_bandwidth_tb_s(timer: Timer, n_bytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth, bytes read plus bytes written, in TB/s."""
    a = torch.randn(n_bytes // 4, device=timer.device)
    b = torch.empty_like(a)
    ms = timer.median_ms(lambda: b.copy_(a))
    del a, b
    free_memory()
    return 2 * n_bytes / (ms * 1e-3) / 1e12


def matmul_tflops(timer: Timer, n: int = 8192) -> float:
    """bf16 ``n^3`` matrix product throughput on random data, TFLOP/s."""
    a = torch.randn(n, n, device=timer.device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=timer.device, dtype=torch.bfloat16)
    ms = timer.median_ms(lambda: a @ b)
    del a, b
    free_memory()
    return 2 * n ** 3 / (ms * 1e-3) / 1e12
