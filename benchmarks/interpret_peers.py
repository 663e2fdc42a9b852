"""Run a peer's Triton kernels (fla) in Triton's CPU interpreter, configured as on an H100.

``traffic.py --impl fla`` counts the bytes of fla's chunk kernels the way it counts ours, so the
two can be compared without a GPU. Two things stand between fla and the interpreter:

* fla picks its tile lists at import from the device's shared memory (``check_shared_mem``),
  which reads as 0 on a CPU: it would fall back to its smallest tiles and re-read more than it
  does on the H100. :func:`prepare_fla` reports the H100's 227 KB and Hopper before fla's ops
  are imported, so the candidate lists are the H100's.
* fla's kernels call tensor methods on ``for`` loop counters (``i_t.to(tl.int64)``); compiled,
  those counters are tensors, in the interpreter Python ints. :func:`tensorize_loop_vars` makes
  the interpreter's rewrite of those modules' kernels re-bind each counter as a tensor at the top
  of the loop body (what the compiler does anyway). The kernels' arithmetic is untouched.

Which of fla's autotune candidates runs is chosen by ``traffic.py --configs``.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import sys

H100_MAX_SHARED_MEM = 232_448  # bytes per block (opt-in), as the driver reports on an H100
_PREFIXES: set[str] = set()


class PeerUnavailable(RuntimeError):
    """The peer is not installed (or cannot be imported) here."""


class _LoopCounters(ast.NodeTransformer):
    """``for i in ...: body`` -> ``for i in ...: i = i; body`` (the interpreter turns every
    assignment into ``to_tensor``)."""

    def visit_For(self, node: ast.For) -> ast.For:  # noqa: N802 (ast API)
        self.generic_visit(node)
        if isinstance(node.target, ast.Name):
            name = node.target.id
            rebind = ast.Assign(targets=[ast.Name(id=name, ctx=ast.Store())],
                                value=ast.Name(id=name, ctx=ast.Load()))
            node.body.insert(0, ast.copy_location(rebind, node.body[0]))
        return node


def tensorize_loop_vars(prefix: str) -> None:
    """Loop counters of interpreted kernels from modules under ``prefix`` become tensors.
    Idempotent; other modules' kernels (ours) are rewritten as Triton does by default."""
    from triton.runtime import interpreter as itp

    _PREFIXES.add(prefix)
    if getattr(itp.FunctionRewriter, "_miras_loop_counters", False):
        return
    plain = itp.FunctionRewriter._transform_ast

    def transform(self, src: str):  # noqa: ANN001, ANN202
        module = getattr(self.fn, "__module__", "") or ""
        if any(module == p or module.startswith(p + ".") for p in _PREFIXES):
            tree = ast.fix_missing_locations(_LoopCounters().visit(ast.parse(src)))
            src = ast.unparse(tree)  # line numbers in errors shift; the code does not
        return plain(self, src)

    itp.FunctionRewriter._transform_ast = transform
    itp.FunctionRewriter._miras_loop_counters = True


def prepare_fla() -> None:
    """Make fla importable under the interpreter with an H100's tile lists; raise
    :class:`PeerUnavailable` (with what to install) when fla is not installed."""
    if "fla.ops" in sys.modules or any(m.startswith("fla.ops.") for m in sys.modules):
        raise RuntimeError("prepare_fla() must run before fla's ops are imported")
    if importlib.util.find_spec("fla") is None:
        raise PeerUnavailable(
            "fla is not installed: pip install --no-deps fla-core==0.6.0 einops "
            "(or the wheels in .whl/, see ../shared/anchors/PEERS_H100.md)")
    hw = importlib.import_module("fla.utils.hardware")
    utils = importlib.import_module("fla.utils")
    hw.get_all_max_shared_mem = lambda: [H100_MAX_SHARED_MEM]
    for module in (hw, utils):
        for flag in ("IS_NVIDIA_HOPPER", "is_nvidia_hopper"):
            if hasattr(module, flag):
                setattr(module, flag, True)
    tensorize_loop_vars("fla")
