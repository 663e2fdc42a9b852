"""Kernel entry points run outside autocast: each family sets its own precision.

Models train under ``torch.autocast(dtype=bfloat16)`` (the search trainer on CUDA, ``miras run
--dtype bf16``, the end-to-end benchmark), so q, k, v reach a family in bf16, as intended. Inside
the family, though, autocast would also recast the float32 arithmetic its contract promises (the
PyTorch chunk forms' matmuls, the delta rule's triangular solve, the deep memory step form's
library matmuls and gradient sums) to bf16, and mix dtypes where a float32 tensor meets one it
had turned to bf16 (``native_layer_norm_backward`` refuses that). The entry points therefore
switch autocast off for their own body: inputs are taken in the dtypes they come in, state and
accumulation stay float32, and the output is in v's dtype, with or without autocast around.
"""
from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch
from torch import Tensor

F = TypeVar("F", bound=Callable[..., object])


def outside_autocast(fn: F) -> F:
    """Decorate a kernel entry point whose first argument is a tensor on the device it runs on."""

    @functools.wraps(fn)
    def run(q: Tensor, *args: object, **kwargs: object) -> object:
        with torch.autocast(q.device.type, enabled=False):
            return fn(q, *args, **kwargs)

    return run  # type: ignore[return-value]
