"""Gated linear attention in chunks, in PyTorch: what the Triton kernel follows.

Per chunk of ``C`` tokens, with ``b_t = Σ_{s<=t} g_s`` the log-gate cumulated inside the chunk
(per channel, ``b`` is non-increasing) and ``S`` the state entering the chunk:

    o_t   = scale · ( (q_t ⊙ e^{b_t})ᵀ S  +  Σ_{j<=t} A_tj v_j )
    A_tj  = Σ_k q_tk k_jk e^{b_tk − b_jk}                      (intra-chunk, causal)
    S'    = diag(e^{b_C}) S + Σ_j (k_j ⊙ e^{b_C − b_j}) v_jᵀ   (state leaving the chunk)

Every exponent above is ``<= 0`` except inside ``A``, where ``q e^{b}`` and ``k e^{-b}`` would
overflow for strong decay. ``A`` is therefore built from sub-chunks of 16: a block ``(I, J)``
with ``J < I`` uses the reference ``r = b`` at the first row of ``I``,
``(q_I ⊙ e^{b_I − r}) (k_J ⊙ e^{r − b_J})ᵀ`` (both exponents ``<= 0``), and the diagonal blocks
are summed element by element. Differentiable by autograd.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .common import (check_inputs, compute_dtype, default_scale, gate_per_channel,
                     sequence_bounds)

SUB_CHUNK = 16


def _to_chunks(x: Tensor, C: int) -> Tensor:
    """``[B, T, H, D]`` (T a multiple of C) to ``[B, H, N, C, D]``."""
    B, T, H, D = x.shape
    return x.reshape(B, T // C, C, H, D).permute(0, 3, 1, 2, 4)  # [B, H, N, C, D]


def _off_diagonal(q: Tensor, k: Tensor, b: Tensor, sub: int) -> Tensor:
    """Blocks ``J < I`` of ``A``, ``[..., C, C]``; inputs ``[..., C, K]`` with ``C = ns · sub``."""
    C, K = q.shape[-2:]
    ns = C // sub
    qs, bs = q.unflatten(-2, (ns, sub)), b.unflatten(-2, (ns, sub))  # [..., ns, sub, K]
    ref = bs[..., :, :1, :]  # [..., ns, 1, K] b at the first row of each row-block I
    q_ref = qs * (bs - ref).exp()  # [..., ns, sub, K]
    col = torch.arange(C, device=q.device)
    before = col[None, :] < (torch.arange(ns, device=q.device) * sub)[:, None]  # [ns, C]
    expo = ref - b.unsqueeze(-3)  # [..., ns, C, K]
    expo = torch.where(before[..., None], expo, torch.full_like(expo, float("-inf")))
    k_ref = k.unsqueeze(-3) * expo.exp()  # [..., ns, C, K] zero from the start of I on
    return (q_ref @ k_ref.transpose(-1, -2)).flatten(-3, -2)  # [..., C, C]


def _diagonal(q: Tensor, k: Tensor, b: Tensor, sub: int) -> Tensor:
    """Diagonal blocks of ``A`` element by element: ``[..., ns, sub, sub]``."""
    C = q.shape[-2]
    ns = C // sub
    qs, ks, bs = (x.unflatten(-2, (ns, sub)) for x in (q, k, b))  # [..., ns, sub, K]
    rows = torch.arange(sub, device=q.device)
    cols = []
    for d in range(sub):
        expo = bs - bs[..., d:d + 1, :]  # [..., ns, sub, K]
        expo = torch.where((rows >= d)[:, None], expo, torch.full_like(expo, float("-inf")))
        cols.append((qs * ks[..., d:d + 1, :] * expo.exp()).sum(-1))  # [..., ns, sub]
    return torch.stack(cols, dim=-1)  # [..., ns, sub(i), sub(j)]


def intra_chunk_scores(q: Tensor, k: Tensor, b: Tensor) -> Tensor:
    """``A_tj = Σ_k q_tk k_jk e^{b_tk − b_jk}`` for ``j <= t`` (0 above the diagonal).

    ``q, k, b: [..., C, K]`` (``b`` the in-chunk cumulative log-gate); returns ``[..., C, C]``.
    """
    C = q.shape[-2]
    sub = SUB_CHUNK if C % SUB_CHUNK == 0 else C
    ns = C // sub
    diag = _diagonal(q, k, b, sub)  # [..., ns, sub, sub]
    eye = torch.eye(ns, dtype=q.dtype, device=q.device).view(ns, 1, ns, 1)
    blocks = diag.unsqueeze(-2) * eye  # [..., ns, sub, ns, sub]
    A = blocks.flatten(-2, -1).flatten(-3, -2)  # [..., C, C]
    if ns > 1:
        A = A + _off_diagonal(q, k, b, sub)
    return A


def _chunked(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, scale: float, state: Tensor,
             C: int) -> tuple[Tensor, Tensor]:
    """Sequences of equal length, compute dtype; ``state: [B, H, K, V]``."""
    B, T, H, K = q.shape
    if T == 0:
        return v.new_zeros(v.shape), state
    pad = (-T) % C
    if g is None:
        g = q.new_zeros(B, T, H, K)
    if pad:  # zero keys and zero log-gates after the end change neither o nor the state
        q, k, v, g = (torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v, g))
    qc, kc, vc, gc = (_to_chunks(x, C) for x in (q, k, v, g))  # [B, H, N, C, D]
    b = gc.cumsum(-2)  # [B, H, N, C, K] cumulative log-gate inside each chunk
    A = intra_chunk_scores(qc, kc, b)  # [B, H, N, C, C]
    o_intra = A @ vc  # [B, H, N, C, V]
    q_dec = qc * b.exp()  # [B, H, N, C, K]
    b_last = b[..., -1:, :]  # [B, H, N, 1, K]
    k_dec = kc * (b_last - b).exp()  # [B, H, N, C, K]
    o_inter = []
    for n in range(qc.shape[2]):
        o_inter.append(q_dec[:, :, n] @ state)  # [B, H, C, V]
        state = state * b_last[:, :, n].transpose(-1, -2).exp()  # [B, H, K, V]
        state = state + k_dec[:, :, n].transpose(-1, -2) @ vc[:, :, n]  # [B, H, K, V]
    o = scale * (o_intra + torch.stack(o_inter, dim=2))  # [B, H, N, C, V]
    o = o.permute(0, 2, 3, 1, 4).reshape(B, T + pad, H, -1)[:, :T].contiguous()  # [B, T, H, V]
    return o, state


def chunk_gla_torch(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None,
                    scale: float | None = None, initial_state: Tensor | None = None,
                    output_final_state: bool = False, cu_seqlens: Tensor | None = None,
                    chunk_size: int = 64) -> tuple[Tensor, Tensor | None]:
    """Chunked gated linear attention; same contract as ``naive.recurrent_gla``."""
    check_inputs(q, k, v, g, initial_state, cu_seqlens)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    B, T, H, K = q.shape
    V = v.shape[-1]
    dt, out_dtype = compute_dtype(q), v.dtype
    scale = default_scale(scale, K)
    g = gate_per_channel(g, K)
    q, k, v = q.to(dt), k.to(dt), v.to(dt)  # [B, T, H, K], [B, T, H, K], [B, T, H, V]
    g = None if g is None else g.to(dt)  # [B, T, H, K]
    n = B if cu_seqlens is None else cu_seqlens.numel() - 1
    h0 = (torch.zeros(n, H, K, V, dtype=dt, device=q.device) if initial_state is None
          else initial_state.to(dt))  # [N, H, K, V]
    if cu_seqlens is None:
        o, final = _chunked(q, k, v, g, scale, h0, chunk_size)
    else:
        outs, finals = [], []
        for i, (bos, eos) in enumerate(sequence_bounds(cu_seqlens)):
            gi = None if g is None else g[:, bos:eos]
            oi, si = _chunked(q[:, bos:eos], k[:, bos:eos], v[:, bos:eos], gi, scale,
                              h0[i:i + 1], chunk_size)
            outs.append(oi)
            finals.append(si)
        o, final = torch.cat(outs, dim=1), torch.cat(finals, dim=0)  # [1, T, H, V], [N, H, K, V]
    return o.to(out_dtype), (final if output_final_state else None)
