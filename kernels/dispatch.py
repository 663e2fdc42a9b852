"""Choose between the recurrent reference, the chunked PyTorch form and the Triton kernel."""
from __future__ import annotations

import os
from typing import Any

BACKENDS = ("naive", "chunk", "triton")
ENV_VAR = "MIRAS_KERNELS"


class BackendError(ValueError):
    """An unknown backend name was asked for, or Triton was asked for where it cannot run."""


def device_type(device: Any) -> str:
    """'cuda', 'cpu', ... from a torch.device or a string, without importing torch."""
    return getattr(device, "type", None) or str(device).split(":")[0]


def triton_available(device: Any) -> bool:
    """Triton runs on CUDA devices, and anywhere under ``TRITON_INTERPRET=1``."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        from .interpreter import apply

        apply()  # set after import: the interpreter's bf16 / tf32 fixes still apply
        return True
    return device_type(device) == "cuda"


def resolve(backend: str | None, device: Any) -> str:
    """Return the backend to use: explicit argument, then ``$MIRAS_KERNELS``, then the default.

    The default is ``triton`` on CUDA and ``chunk`` elsewhere.
    """
    choice = backend or os.environ.get(ENV_VAR) or None
    if choice is None:
        return "triton" if device_type(device) == "cuda" else "chunk"
    if choice not in BACKENDS:
        raise BackendError(f"unknown kernel backend {choice!r}; allowed: {', '.join(BACKENDS)}")
    if choice == "triton" and not triton_available(device):
        raise BackendError(
            f"backend 'triton' needs a CUDA device or TRITON_INTERPRET=1 (tensors are on {device})"
        )
    return choice


STEPS_TRITON_MAX_WIDTH = 128  # K, V and a step's rows held whole in a program's tiles


def steps_triton_supported(depth: int, K: int, V: int, S: int) -> bool:
    """Whether the deep memory's step form (steps of S > 1 tokens) runs its Triton keys and reads
    on the Triton backend (``deep_memory/_steps_keys.py``, ``_steps_read.py``): a depth-2 memory,
    K, V and S at most ``STEPS_TRITON_MAX_WIDTH``; other shapes run its PyTorch form."""
    return depth == 2 and max(K, V, S) <= STEPS_TRITON_MAX_WIDTH
