"""Choose between the recurrent reference, the chunked PyTorch form and the Triton kernel."""
from __future__ import annotations

import os

import torch

BACKENDS = ("naive", "chunk", "triton")
ENV_VAR = "MIRAS_KERNELS"


class BackendError(ValueError):
    """An unknown backend name was asked for, or Triton was asked for where it cannot run."""


def triton_available(device: torch.device) -> bool:
    """Triton runs on CUDA devices, and anywhere under ``TRITON_INTERPRET=1``."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    return device.type == "cuda"


def resolve(backend: str | None, device: torch.device | str) -> str:
    """Return the backend to use: explicit argument, then ``$MIRAS_KERNELS``, then the default.

    The default is ``triton`` on CUDA and ``chunk`` elsewhere.
    """
    device = torch.device(device)
    choice = backend or os.environ.get(ENV_VAR) or None
    if choice is None:
        return "triton" if device.type == "cuda" else "chunk"
    if choice not in BACKENDS:
        raise BackendError(f"unknown kernel backend {choice!r}; allowed: {', '.join(BACKENDS)}")
    if choice == "triton" and not triton_available(device):
        raise BackendError(
            f"backend 'triton' needs a CUDA device or TRITON_INTERPRET=1 (tensors are on {device})"
        )
    return choice
