"""Triton cache keys of our kernels do not depend on which kernel is compiled first (Triton 3.6,
the GPU machine's, folds a callee's global constexprs into a caller's key only if the callee's
key was formed before; kernels/jit_keys.py forms them at import), so a precompiled cache
(benchmarks/precompile.py) serves the device whatever order it runs in. The order test fails
without jit_keys under Triton 3.6 (``PYTHONPATH=<triton 3.6 folder> pytest ...``); CI's Triton
no longer has the fault, so the second test checks the cause itself."""
from __future__ import annotations

import json
import os
import subprocess
import sys

MODULES = ["mirasdsl.kernels.deep_memory._step_fwd", "mirasdsl.kernels.deep_memory._step_bwd",
           "mirasdsl.kernels.deep_memory._step_linear", "mirasdsl.kernels.deep_memory._steps_read",
           "mirasdsl.kernels.deep_memory._steps_keys", "mirasdsl.kernels.deep_memory.chunk",
           "mirasdsl.kernels.delta._tl_common", "mirasdsl.kernels.delta._tl_fwd",
           "mirasdsl.kernels.delta._tl_bwd", "mirasdsl.kernels.gla.chunk"]

PROGRAM = """
import importlib, json, sys
from mirasdsl.kernels.jit_keys import _jit_function
kernels = []
for m in sys.argv[2:]:
    for name, value in vars(importlib.import_module(m)).items():
        fn = _jit_function(value)
        if fn is not None and fn.fn.__module__ == m and name.endswith("_kernel"):
            kernels.append((m + "." + name, fn))
if sys.argv[1] == "reverse":
    kernels.reverse()
print(json.dumps({name: fn.cache_key for name, fn in kernels}))
"""


def _keys(order: str) -> dict[str, str]:
    """Every kernel's cache key, formed in ``order`` (forward or reverse over the modules)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiled kernels, as on the GPU
    done = subprocess.run([sys.executable, "-c", PROGRAM, order, *MODULES], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cache_keys_do_not_depend_on_import_order():
    forward, backward = _keys("forward"), _keys("reverse")
    assert len(forward) > 30
    assert forward == backward, sorted(k for k in forward if forward[k] != backward[k])


FORMED = """
import importlib, sys
from mirasdsl.kernels.jit_keys import _jit_function
late = [m + "." + n for m in sys.argv[1:] for n, v in vars(importlib.import_module(m)).items()
        if (fn := _jit_function(v)) is not None and fn.fn.__module__ == m and fn.hash is None]
print(len(late), late[:5])
"""


def test_every_key_is_formed_at_import():
    """What makes the order irrelevant on any Triton (3.9, CI's, forms callees' keys first
    itself; 3.6, the GPU machine's, does not): no jitted function of ours is left without its
    key after its module's import."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", FORMED, *MODULES], capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[0] == "0", done.stdout
