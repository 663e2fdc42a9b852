"""The interpreter fixes of kernels/interpreter.py: bf16 and tf32 as a GPU computes them."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="checks Triton's CPU interpreter"
)


def _kernels():
    """A matmul and a cast kernel (defined here, after the interpreter is chosen)."""
    import triton
    import triton.language as tl

    @triton.jit
    def matmul(a, b, c, N: tl.constexpr, PREC: tl.constexpr):
        o = tl.arange(0, N)
        x = tl.load(a + o[:, None] * N + o[None, :])  # [N, N]
        y = tl.load(b + o[:, None] * N + o[None, :])
        tl.store(c + o[:, None] * N + o[None, :], tl.dot(x, y, input_precision=PREC))

    @triton.jit
    def cast(x, y, N: tl.constexpr):
        o = tl.arange(0, N)
        tl.store(y + o, tl.load(x + o).to(y.dtype.element_ty))

    return matmul, cast


def test_bf16_dot_multiplies_values_not_bits() -> None:
    import mirasdsl.kernels  # noqa: F401  (applies the fixes)

    matmul, _ = _kernels()
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(32, 32, generator=gen).bfloat16() for _ in range(2))
    c = torch.empty(32, 32)
    matmul[(1,)](a, b, c, 32, "ieee")
    torch.testing.assert_close(c, a.float() @ b.float(), rtol=1e-5, atol=1e-5)


def test_bf16_casts_round_to_nearest_even() -> None:
    import mirasdsl.kernels  # noqa: F401

    _, cast = _kernels()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1024, generator=gen) * 10.0 ** torch.randint(-30, 30, (1024,), generator=gen)
    x[:7] = torch.tensor([float("inf"), -float("inf"), float("nan"), 3.4e38, -0.0, 1e-40, 1.00390625])
    y = torch.empty(1024, dtype=torch.bfloat16)
    cast[(1,)](x, y, 1024)
    ref = x.to(torch.bfloat16)  # torch rounds to nearest even
    nan = ref.isnan()
    assert torch.equal(y.isnan(), nan)  # NaN payloads may differ
    assert torch.equal(y[~nan].view(torch.int16), ref[~nan].view(torch.int16))


def test_tf32_dot_rounds_operands_as_tensor_cores() -> None:
    """tf32: the product of the operands rounded to 10 mantissa bits (ties away from zero),
    which differs from the exact fp32 product; ieee keeps fp32."""
    from mirasdsl.kernels.interpreter import round_to_tf32

    matmul, _ = _kernels()
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(16, 16, generator=gen), torch.randn(16, 16, generator=gen)
    c32, ctf = torch.empty(16, 16), torch.empty(16, 16)
    matmul[(1,)](a, b, c32, 16, "ieee")
    matmul[(1,)](a, b, ctf, 16, "tf32")
    rounded = [torch.from_numpy(round_to_tf32(t.numpy())).double() for t in (a, b)]
    torch.testing.assert_close(ctf.double(), rounded[0] @ rounded[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(c32.double(), a.double() @ b.double(), rtol=1e-6, atol=1e-6)
    assert (ctf - c32).abs().max() > 1e-4  # the rounding is really applied


def test_tf32x3_dot_sums_three_tf32_products() -> None:
    """tf32x3: each operand split into a tf32 part and a tf32 remainder, the three products
    other than the remainders' summed: float32-like accuracy, not the plain float32 product."""
    from mirasdsl.kernels.interpreter import round_to_tf32

    matmul, _ = _kernels()
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(16, 16, generator=gen), torch.randn(16, 16, generator=gen)
    c3 = torch.empty(16, 16)
    matmul[(1,)](a, b, c3, 16, "tf32x3")
    parts = []
    for t in (a, b):
        hi = round_to_tf32(t.numpy())
        parts.append((torch.from_numpy(hi).double(), torch.from_numpy(round_to_tf32(t.numpy() - hi)).double()))
    (a_hi, a_lo), (b_hi, b_lo) = parts
    torch.testing.assert_close(c3.double(), a_hi @ b_hi + a_hi @ b_lo + a_lo @ b_hi, rtol=1e-6, atol=1e-6)
    exact = a.double() @ b.double()
    assert ((c3.double() - exact).norm() / exact.norm()) < 1e-6  # tf32 alone: ~3e-4


def test_tf32_rounding_by_hand() -> None:
    from mirasdsl.kernels.interpreter import round_to_tf32

    ulp = 2.0**-10
    x = np.array([1.0, 1 + ulp / 2, 1 + ulp / 4, 1 + 3 * ulp / 4, -(1 + ulp / 2), np.inf, np.nan], np.float32)
    got = round_to_tf32(x)
    assert got[0] == 1.0 and got[1] == 1 + ulp and got[2] == 1.0 and got[3] == 1 + ulp
    assert got[4] == -(1 + ulp) and np.isinf(got[5]) and np.isnan(got[6])
