"""Make Triton's CPU interpreter compute what the GPU computes for bf16 and tf32.

Every Triton kernel here is tested on the CPU under ``TRITON_INTERPRET=1``. Triton's interpreter
(3.x) departs from the GPU in three ways that matter to half-precision kernels:

1. ``tl.dot`` on bfloat16 operands multiplies their raw 16-bit patterns as integers (NumPy has
   no bfloat16), so any bf16 matmul returns garbage;
2. a float32 -> bfloat16 cast truncates instead of rounding to nearest even: twice the error,
   and biased (every value shrinks by 2^-9 on average), so a tolerance met on the CPU would not
   be the one that holds on the GPU;
3. ``tl.dot(..., input_precision="tf32")`` multiplies in full float32, where a tensor core first
   rounds both operands to tf32 (10-bit mantissa); ``"tf32x3"`` likewise, where the GPU splits
   each operand into a tf32 high part and a tf32 remainder and sums three tf32 products (the
   remainders' product left out).

``apply()`` replaces the two interpreter builder methods concerned so that bf16 operands are
widened exactly, bf16 casts round to nearest even and tf32 operands are rounded as on the GPU.
It is idempotent, runs only under the interpreter (``mirasdsl.kernels`` calls it on import when
``TRITON_INTERPRET=1``) and leaves compiled kernels untouched.

NumPy is imported only when the fixes are used (the interpreter needs it; an install that never
interprets does not).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

_APPLIED = False


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """The float32 values of bfloat16 numbers stored as uint16 (exact)."""
    import numpy as np

    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16, nearest even (NaN kept quiet), as uint16 bit patterns."""
    import numpy as np

    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    odd = (bits >> np.uint32(16)) & np.uint32(1)
    out = ((bits + np.uint32(0x7FFF) + odd) >> np.uint32(16)).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), out)


def round_to_tf32(x: np.ndarray) -> np.ndarray:
    """Round float32 to the 10-bit mantissa of tf32, ties away from zero (cvt.rna.tf32.f32)."""
    import numpy as np

    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    out = ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)
    return np.where(np.isfinite(x), out, x)


def apply() -> None:
    """Patch the interpreter's cast and dot (no-op unless ``TRITON_INTERPRET=1``)."""
    global _APPLIED
    if _APPLIED or os.environ.get("TRITON_INTERPRET") != "1":
        return
    try:
        import triton.language as tl
        from triton.runtime import interpreter as itp
    except ImportError:  # no Triton here: nothing is interpreted
        return

    builder = itp.InterpreterBuilder
    plain_cast, plain_dot = builder.cast_impl, builder.create_dot

    def cast_impl(self, src, dst_type):  # type: ignore[no-untyped-def]
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            return itp.TensorHandle(f32_to_bf16_bits(src.data), dst_type.scalar)
        return plain_cast(self, src, dst_type)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):  # type: ignore[no-untyped-def]
        if a.dtype.scalar == tl.bfloat16 or b.dtype.scalar == tl.bfloat16:
            a = itp.TensorHandle(_widen(a.data, a.dtype.scalar), tl.float32)
            b = itp.TensorHandle(_widen(b.data, b.dtype.scalar), tl.float32)
        elif a.dtype.scalar == tl.float32:
            mode = str(input_precision).rsplit(".", 1)[-1].upper()
            if mode == "TF32":
                a = itp.TensorHandle(round_to_tf32(a.data), tl.float32)
                b = itp.TensorHandle(round_to_tf32(b.data), tl.float32)
            elif mode == "TF32X3":
                return _tf32x3(self, a, b, d, input_precision, max_num_imprecise_acc)
        return plain_dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    def _tf32x3(this, a, b, d, input_precision, max_num_imprecise_acc):  # type: ignore[no-untyped-def]
        """``a_hi b_hi + a_hi b_lo + a_lo b_hi`` with every part rounded to tf32."""
        parts = []
        for x in (a, b):
            hi = round_to_tf32(x.data)
            parts.append((itp.TensorHandle(hi, tl.float32),
                          itp.TensorHandle(round_to_tf32(x.data - hi), tl.float32)))
        (a_hi, a_lo), (b_hi, b_lo) = parts
        acc = plain_dot(this, a_lo, b_hi, d, input_precision, max_num_imprecise_acc)
        acc = plain_dot(this, a_hi, b_lo, acc, input_precision, max_num_imprecise_acc)
        return plain_dot(this, a_hi, b_hi, acc, input_precision, max_num_imprecise_acc)

    def _widen(data: np.ndarray, dtype) -> np.ndarray:  # type: ignore[no-untyped-def]
        return bf16_bits_to_f32(data) if dtype == tl.bfloat16 else data.astype("float32")

    builder.cast_impl, builder.create_dot = cast_impl, create_dot
    _APPLIED = True
