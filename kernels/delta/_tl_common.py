"""Triton helpers shared by the delta-rule kernels: chunk bounds, tile loads, gate tiles.

Every kernel sees packed tensors: q, k [TT, H, K], v [TT, H, V], beta [TT, H], the in-chunk
cumulative gate G [TT, H] (scalar) or [TT, H, K] (per channel), and per-token chunk-square
buffers [TT, H, BT]. A batch without ``cu_seqlens`` is packed as B sequences of length T.
GATE is 0 (no gate), 1 (scalar) or 2 (per channel).
"""
from __future__ import annotations

import triton
import triton.language as tl
from ..jit_keys import settle


@triton.jit
def chunk_bounds(i_c, chunk_seq, cu, chunk_off, BT: tl.constexpr):
    """First token (int64) of global chunk ``i_c`` and its number of tokens (≤ BT)."""
    n = tl.load(chunk_seq + i_c)
    t0 = tl.load(cu + n) + (i_c - tl.load(chunk_off + n)) * BT
    return t0.to(tl.int64), tl.minimum(BT, tl.load(cu + n + 1) - t0)


@triton.jit
def pass_program(cu, chunk_off, H, BV: tl.constexpr):
    """A state-pass program (grid: value blocks × sequences·heads): its sequence n, head h, the
    sequence's token bounds, its first global chunk and the program's first value column."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    n, h = i_nh // H, i_nh % H
    return n, h, tl.load(cu + n), tl.load(cu + n + 1), tl.load(chunk_off + n), i_v * BV


@triton.jit
def pass_chunk(bos, eos, c, BT: tl.constexpr):
    """Chunk c of a sequence [bos, eos): its first token (int64), number of tokens, local rows
    0..BT-1 and their mask."""
    t0 = bos + c * BT
    rows = tl.arange(0, BT)
    nt = tl.minimum(BT, eos - t0)
    return t0.to(tl.int64), nt, rows, rows < nt


@triton.jit
def load_state(ptr, n, h, H, K, V, BK: tl.constexpr, BV: tl.constexpr, v0, HAS: tl.constexpr):
    """Block [BK, BV] (columns from v0) of state n of a [N, H, K, V] tensor in float32; zeros
    when HAS is off (no such tensor)."""
    s = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS:
        p, msk = state_tile(ptr, n, h, H, K, V, BK, BV, v0)
        s = tl.load(p, mask=msk, other=0.0).to(tl.float32)
    return s


# Tiles are addressed as a scalar 64-bit base (the chunk's first token t0) plus 32-bit offsets
# of the local rows: per-element 64-bit offsets had sm_90 builds spill registers in every kernel.


@triton.jit
def load_tile_raw(ptr, t0, rows, valid, h, H, D, BD: tl.constexpr, d0=0):
    """Local rows ``rows`` (tokens t0 + rows) of a [TT, H, D] tensor, columns d0..d0+BD, in the
    tensor's own dtype [len(rows), BD] (half the registers of float32 for bf16/fp16)."""
    cols = d0 + tl.arange(0, BD)
    offs = rows[:, None] * (H * D) + cols[None, :]
    base = ptr + (t0 * H + h) * D
    return tl.load(base + offs, mask=valid[:, None] & (cols[None, :] < D), other=0.0)


@triton.jit
def load_tile(ptr, t0, rows, valid, h, H, D, BD: tl.constexpr, d0=0):
    """``load_tile_raw`` as float32."""
    return load_tile_raw(ptr, t0, rows, valid, h, H, D, BD, d0).to(tl.float32)


@triton.jit
def store_tile(ptr, x, t0, rows, valid, h, H, D, BD: tl.constexpr, d0=0):
    """Store x [len(rows), BD] into local rows of a [TT, H, D] tensor (cast to its dtype)."""
    cols = d0 + tl.arange(0, BD)
    offs = rows[:, None] * (H * D) + cols[None, :]
    base = ptr + (t0 * H + h) * D
    # rounds to nearest even, on GPUs and (kernels/interpreter.py) under the CPU interpreter
    tl.store(base + offs, x.to(ptr.dtype.element_ty), mask=valid[:, None] & (cols[None, :] < D))


@triton.jit
def load_row(ptr, t0, r, nt, h, H, D, BD: tl.constexpr):
    """Local row r (a scalar) of a [TT, H, D] tensor as float32 [BD]; zeros unless r < nt."""
    cols = tl.arange(0, BD)
    mask = (cols < D) & ((r + cols * 0) < nt)  # a block mask (scalar & block is not portable)
    return tl.load(ptr + (t0 * H + h) * D + r * (H * D) + cols, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def load_vec(ptr, t0, rows, valid, h, H):
    """One value per local row of a [TT, H] tensor, float32."""
    return tl.load(ptr + t0 * H + h + rows * H, mask=valid, other=0.0).to(tl.float32)


@triton.jit
def store_vec(ptr, x, t0, rows, valid, h, H):
    """Store one value per local row into a [TT, H] tensor."""
    tl.store(ptr + t0 * H + h + rows * H, x.to(ptr.dtype.element_ty), mask=valid)


@triton.jit
def gate_tile(G, t0, rows, valid, h, H, K, GATE: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
              k0=0):
    """In-chunk log decay of the rows: [BT, BK] per channel (channels from k0), [BT, 1] scalar
    or no gate."""
    if GATE == 2:
        return load_tile(G, t0, rows, valid, h, H, K, BK, k0)
    elif GATE == 1:
        return load_vec(G, t0, rows, valid, h, H)[:, None]
    else:
        return tl.zeros([BT, 1], dtype=tl.float32)


@triton.jit
def gate_row(G, row, h, H, K, GATE: tl.constexpr, BK: tl.constexpr, k0=0):
    """Log decay at one token (global index ``row``, int64) as a row [1, BK] (per channel,
    channels from k0) or [1, 1]."""
    if GATE == 2:
        cols = k0 + tl.arange(0, BK)
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
def sub_chunk_tiles(q, k, G, t0, nt, i_s, h, H, K, BC: tl.constexpr, BK: tl.constexpr):
    """A per-channel sub-chunk program's rows: their local indices in the sub-chunk ``ci``, in
    the chunk ``rows`` (token t0 + row), their mask, and the float32 tiles of q, k and the
    in-chunk gate G over them, [BC, BK] each."""
    ci = tl.arange(0, BC)
    rows = i_s * BC + ci
    valid = rows < nt
    qa = load_tile(q, t0, rows, valid, h, H, K, BK, 0)
    ka = load_tile(k, t0, rows, valid, h, H, K, BK, 0)
    ga = load_tile(G, t0, rows, valid, h, H, K, BK, 0)
    return ci, rows, valid, qa, ka, ga


# Largest fall of the in-chunk log-gates across one sub-chunk (nats, any channel) at which the
# per-channel kernels form the sub-chunk's diagonal block by a matmul against the gate at its
# first row, like the blocks left of it: the factors e^{G_i − ref} and e^{ref − G_j} then lie in
# [e^{-30}, e^{30}], far from float32's (and tf32's) overflow and underflow, so every product
# keeps its relative accuracy. Stronger decay takes the exact column-by-column loop.
DENSE_SPAN = tl.constexpr(30.0)


@triton.jit
def sub_span(G, t0, r0, nt, h, H, K, BC: tl.constexpr, BK: tl.constexpr):
    """How far the per-channel gates fall across the sub-chunk of rows r0 .. r0 + BC − 1 (its
    valid rows), the most over the channels: a scalar ≥ 0."""
    last = tl.minimum(r0 + BC, nt) - 1
    fall = load_row(G, t0, r0, nt, h, H, K, BK) - load_row(G, t0, last, nt, h, H, K, BK)  # [BK]
    return tl.max(tl.abs(fall), axis=0)


@triton.jit
def masked_exp(x, mask):
    """exp(x) where mask holds, 0 elsewhere (the exponent is never evaluated off the mask)."""
    return tl.where(mask, tl.exp(tl.where(mask, x, 0.0)), 0.0)


@triton.jit
def state_tile(ptr, idx, h, H, K, V, BK: tl.constexpr, BV: tl.constexpr, v0, k0=0):
    """Pointers and mask of block [BK, BV] (rows from k0, columns from v0) of state ``idx`` in
    [*, H, K, V]."""
    kk = k0 + tl.arange(0, BK)
    vv = v0 + tl.arange(0, BV)
    base = ptr + (idx.to(tl.int64) * H + h) * (K * V)
    return base + kk[:, None] * V + vv[None, :], (kk[:, None] < K) & (vv[None, :] < V)


@triton.jit
def dot(a, b, PREC: tl.constexpr):
    """float32 matmul; PREC is 'ieee' for float32 inputs, 'tf32' for half-precision inputs."""
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def raw_dot(a, b, PREC: tl.constexpr):
    """Matmul of two tiles as stored (``load_tile_raw``, states loaded without a cast), float32
    accumulation. For bf16/fp16 tensors the products are exact, so this equals ``dot`` on the
    tiles cast to float32 (tf32 rounds a half value exactly) at half the operand registers and
    twice the tensor-core rate; float32 tensors (PREC 'ieee') run as ``dot``. A float32 tile
    beside a half one (S_0 or Ṽ, kept in float32 with a scalar gate, beside dO) makes both
    float32 at PREC."""
    if PREC == "ieee" or a.dtype != b.dtype:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PREC)
    else:
        return tl.dot(a, b)


@triton.jit
def chunk_cumsum_kernel(
    g, out, chunk_seq, cu, chunk_off, H, K,
    GATE: tl.constexpr, REVERSE: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
):
    """Cumulative sum of a gate (or its gradient, REVERSE) inside each chunk, in float32."""
    i_c, h = tl.program_id(0), tl.program_id(1)
    t0, nt = chunk_bounds(i_c, chunk_seq, cu, chunk_off, BT)
    rows = tl.arange(0, BT)
    valid = rows < nt
    if GATE == 2:
        x = load_tile(g, t0, rows, valid, h, H, K, BK)  # [BT, BK]
        store_tile(out, tl.cumsum(x, 0, reverse=REVERSE), t0, rows, valid, h, H, K, BK)
    else:
        x = load_vec(g, t0, rows, valid, h, H)  # [BT]
        store_vec(out, tl.cumsum(x, 0, reverse=REVERSE), t0, rows, valid, h, H)


settle(globals())  # Triton cache keys formed at import, whatever kernel runs first (jit_keys.py)
