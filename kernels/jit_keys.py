"""Triton cache keys that do not depend on which kernel ran first.

Triton (3.6 to 3.9 at least) forms a kernel's cache key from its source and those of the
``@triton.jit`` functions it calls, and also from the global constexprs those callees use, but
takes the callees' globals only if their own keys were formed earlier: ``_update_hash`` merges a
callee's ``used_global_vals`` before it asks for the callee's ``cache_key``. A kernel's key thus
depends on which other kernels that share its helpers were compiled before it in the process,
and a cache filled in one order (``benchmarks/precompile.py``) misses in another (the device's).
:func:`settle` forms every key of a module at its import, in definition order (helpers first),
so each kernel's key is the same whatever runs first; :func:`settle_package` does it for a
package whose sources are not ours (fla, in the benchmark), module by module in name order.
"""
from __future__ import annotations

import sys
from typing import Any


def _jit_function(value: Any) -> Any | None:
    """The ``JITFunction`` inside an autotuner / heuristics wrapper, or None."""
    from triton.runtime.jit import JITFunction

    for _ in range(4):
        if isinstance(value, JITFunction):
            return value
        value = getattr(value, "fn", None)
    return None


def settle(namespace: dict[str, Any]) -> None:
    """Form the cache key of every jitted function defined in this module's ``namespace``
    (``globals()``), in definition order; call at the end of the module."""
    for value in list(namespace.values()):
        fn = _jit_function(value)
        if fn is not None and fn.fn.__module__ == namespace["__name__"]:
            fn.cache_key  # noqa: B018 - formed here, once, for good


def settle_package(prefix: str) -> None:
    """:func:`settle` for every loaded module named ``prefix`` or under it, in name order."""
    for name in sorted(n for n in sys.modules if n == prefix or n.startswith(prefix + ".")):
        module = sys.modules[name]
        if module is not None:
            settle(vars(module))
