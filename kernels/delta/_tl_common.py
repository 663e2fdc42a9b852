"""Triton helpers shared by the delta-rule kernels: chunk bounds, tile loads, gate tiles.

Every kernel sees packed tensors: q, k [TT, H, K], v [TT, H, V], beta [TT, H], the in-chunk
cumulative gate G [TT, H] (scalar) or [TT, H, K] (per channel), and per-token chunk-square
buffers [TT, H, BT]. A batch without ``cu_seqlens`` is packed as B sequences of length T.
GATE is 0 (no gate), 1 (scalar) or 2 (per channel).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def chunk_bounds(i_c, chunk_seq, cu, chunk_off, BT: tl.constexpr):
    """First token and one past the last token of global chunk ``i_c``."""
    n = tl.load(chunk_seq + i_c)
    eos = tl.load(cu + n + 1)
    t0 = tl.load(cu + n) + (i_c - tl.load(chunk_off + n)) * BT
    return t0, tl.minimum(t0 + BT, eos)


@triton.jit
def pass_program(cu, chunk_off, H, BV: tl.constexpr):
    """A state-pass program (grid: value blocks × sequences·heads): its sequence n, head h, the
    sequence's token bounds, its first global chunk and the program's first value column."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    n, h = i_nh // H, i_nh % H
    return n, h, tl.load(cu + n), tl.load(cu + n + 1), tl.load(chunk_off + n), i_v * BV


@triton.jit
def pass_chunk(bos, eos, c, BT: tl.constexpr):
    """Chunk c of a sequence [bos, eos): first token, one past the last, its rows and their mask."""
    t0 = bos + c * BT
    t_end = tl.minimum(t0 + BT, eos)
    rows = t0.to(tl.int64) + tl.arange(0, BT)
    return t0, t_end, rows, rows < t_end


@triton.jit
def load_state(ptr, n, h, H, K, V, BK: tl.constexpr, BV: tl.constexpr, v0, HAS: tl.constexpr):
    """Block [BK, BV] (columns from v0) of state n of a [N, H, K, V] tensor in float32; zeros
    when HAS is off (no such tensor)."""
    s = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS:
        p, msk = state_tile(ptr, n, h, H, K, V, BK, BV, v0)
        s = tl.load(p, mask=msk, other=0.0).to(tl.float32)
    return s


@triton.jit
def load_tile(ptr, rows, valid, h, H, D, BD: tl.constexpr, d0=0):
    """Rows ``rows`` of a [TT, H, D] tensor, columns d0..d0+BD, as float32 [len(rows), BD]."""
    cols = d0 + tl.arange(0, BD)
    offs = (rows[:, None] * H + h) * D + cols[None, :]
    return tl.load(ptr + offs, mask=valid[:, None] & (cols[None, :] < D), other=0.0).to(tl.float32)


@triton.jit
def store_tile(ptr, x, rows, valid, h, H, D, BD: tl.constexpr, d0=0):
    """Store x [len(rows), BD] into rows of a [TT, H, D] tensor (cast to its dtype)."""
    cols = d0 + tl.arange(0, BD)
    offs = (rows[:, None] * H + h) * D + cols[None, :]
    # rounds to nearest even, on GPUs and (kernels/interpreter.py) under the CPU interpreter
    tl.store(ptr + offs, x.to(ptr.dtype.element_ty), mask=valid[:, None] & (cols[None, :] < D))


@triton.jit
def load_vec(ptr, rows, valid, h, H):
    """One value per row of a [TT, H] tensor, float32."""
    return tl.load(ptr + rows * H + h, mask=valid, other=0.0).to(tl.float32)


@triton.jit
def gate_tile(G, rows, valid, h, H, K, GATE: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
    """In-chunk log decay of the rows: [BT, BK] per channel, [BT, 1] scalar or no gate."""
    if GATE == 2:
        return load_tile(G, rows, valid, h, H, K, BK)
    elif GATE == 1:
        return load_vec(G, rows, valid, h, H)[:, None]
    else:
        return tl.zeros([BT, 1], dtype=tl.float32)


@triton.jit
def gate_row(G, row, h, H, K, GATE: tl.constexpr, BK: tl.constexpr):
    """Log decay at one token as a row [1, BK] (per channel) or [1, 1]."""
    if GATE == 2:
        cols = tl.arange(0, BK)
        return tl.load(G + (row * H + h) * K + cols[None, :], mask=cols[None, :] < K, other=0.0)
    elif GATE == 1:
        return tl.load(G + row * H + h + tl.zeros([1, 1], dtype=tl.int32))
    else:
        return tl.zeros([1, 1], dtype=tl.float32)


@triton.jit
def gate_col(G, row, h, H, K, GATE: tl.constexpr, BK: tl.constexpr):
    """Log decay at one token as a column [BK, 1] (per channel) or [1, 1]."""
    if GATE == 2:
        cols = tl.arange(0, BK)
        return tl.load(G + (row * H + h) * K + cols[:, None], mask=cols[:, None] < K, other=0.0)
    elif GATE == 1:
        return tl.load(G + row * H + h + tl.zeros([1, 1], dtype=tl.int32))
    else:
        return tl.zeros([1, 1], dtype=tl.float32)


@triton.jit
def masked_exp(x, mask):
    """exp(x) where mask holds, 0 elsewhere (the exponent is never evaluated off the mask)."""
    return tl.where(mask, tl.exp(tl.where(mask, x, 0.0)), 0.0)


@triton.jit
def state_tile(ptr, idx, h, H, K, V, BK: tl.constexpr, BV: tl.constexpr, v0):
    """Pointers and mask of block [BK, BV] (columns from v0) of state ``idx`` in [*, H, K, V]."""
    kk = tl.arange(0, BK)
    vv = v0 + tl.arange(0, BV)
    offs = ((idx.to(tl.int64) * H + h) * K + kk[:, None]) * V + vv[None, :]
    return ptr + offs, (kk[:, None] < K) & (vv[None, :] < V)


@triton.jit
def dot(a, b, PREC: tl.constexpr):
    """float32 matmul; PREC is 'ieee' for float32 inputs, 'tf32' for half-precision inputs."""
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def chunk_cumsum_kernel(
    g, out, chunk_seq, cu, chunk_off, H, K,
    GATE: tl.constexpr, REVERSE: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
):
    """Cumulative sum of a gate (or its gradient, REVERSE) inside each chunk, in float32."""
    i_c, h = tl.program_id(0), tl.program_id(1)
    t0, t_end = chunk_bounds(i_c, chunk_seq, cu, chunk_off, BT)
    rows = t0.to(tl.int64) + tl.arange(0, BT)
    valid = rows < t_end
    if GATE == 2:
        x = load_tile(g, rows, valid, h, H, K, BK)  # [BT, BK]
        store_tile(out, tl.cumsum(x, 0, reverse=REVERSE), rows, valid, h, H, K, BK)
    else:
        x = load_vec(g, rows, valid, h, H)  # [BT]
        tl.store(out + rows * H + h, tl.cumsum(x, 0, reverse=REVERSE).to(out.dtype.element_ty), mask=valid)
