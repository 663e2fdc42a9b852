"""Shared test set-up: on a machine without CUDA, Triton kernels run under its interpreter."""
from __future__ import annotations

import os

import pytest

try:  # the interpreter must be chosen before any @triton.jit function is defined
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover - torch is a hard dependency
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` where no CUDA device is present."""
    if _HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


sys_path_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import sys  # noqa: E402

if sys_path_root not in sys.path:
    sys.path.append(sys_path_root)  # after PYTHONPATH: an installed copy wins
