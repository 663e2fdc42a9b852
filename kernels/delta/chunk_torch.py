"""Chunked (WY / UT transform) gated delta rule in PyTorch: the algorithm chunk.py follows.

Per chunk of C tokens, with G the in-chunk cumulative log decay (G_i = Σ_{s≤i} g_s, a vector
over K for per-channel gates) and D_ij = exp(G_i − G_j) for i ≥ j (always ≤ 1, so stable):

    A  = strictly_lower(diag(β) · P),   P_ij = Σ_k k_ik k_jk D_ijk
    T  = (I + A)^{-1} diag(β)                       (triangular solve)
    W  = T (K ⊙ e^G),  U = T V,  Ṽ = U − W S_0     (pseudo-values)
    O  = scale · [(Q ⊙ e^G) S_0 + lower(M) Ṽ],      M_ij = Σ_k q_ik k_jk D_ijk
    S_C = diag(e^{G_last}) S_0 + (K ⊙ e^{G_last − G})ᵀ Ṽ
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import Result, Tensor, check_inputs, split_varlen


def _pair_decay(gc: Tensor) -> Tensor:
    """D_ij = exp(G_i − G_j) on i ≥ j, zero above: [B, H, C, C, Kg] from gc [B, H, C, Kg]."""
    c = gc.shape[-2]
    keep = torch.ones(c, c, dtype=torch.bool, device=gc.device).tril()  # [C, C]
    diff = gc[..., :, None, :] - gc[..., None, :, :]  # [B, H, C, C, Kg]
    return diff.masked_fill(~keep[..., None], float("-inf")).exp()


def _gated_products(a: Tensor, b: Tensor, decay: Tensor) -> Tensor:
    """Σ_k a_ik b_jk D_ijk: [B, H, C, C] (a scalar gate has Kg == 1 and factors out)."""
    if decay.shape[-1] == 1:
        return (a @ b.transpose(-1, -2)) * decay[..., 0]
    return torch.einsum("bhik,bhjk,bhijk->bhij", a, b, decay)


def _chunk_step(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, gc: Tensor, s: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """One chunk: q, k [B, H, C, K], v [B, H, C, V], beta [B, H, C], gc [B, H, C, Kg], s [B, H, K, V]."""
    c = q.shape[-2]
    decay = _pair_decay(gc)  # [B, H, C, C, Kg]
    a = (beta[..., None] * _gated_products(k, k, decay)).tril(-1)  # [B, H, C, C]
    eye = torch.eye(c, dtype=q.dtype, device=q.device)
    t = torch.linalg.solve_triangular(
        eye + a, torch.diag_embed(beta), upper=False, unitriangular=True
    )  # [B, H, C, C] = (I + A)^{-1} diag(beta)
    w = t @ (k * gc.exp())  # [B, H, C, K]
    u = t @ v  # [B, H, C, V]
    v_new = u - w @ s  # [B, H, C, V]
    m = _gated_products(q, k, decay)  # [B, H, C, C], lower triangle incl. the diagonal
    o = scale * ((q * gc.exp()) @ s + m @ v_new)  # [B, H, C, V]
    g_last = gc[..., -1:, :]  # [B, H, 1, Kg]
    k_to_end = k * (g_last - gc).exp()  # [B, H, C, K]
    s = g_last.transpose(-1, -2).exp() * s + k_to_end.transpose(-1, -2) @ v_new  # [B, H, K, V]
    return o, s


def _to_chunks(x: Tensor, c: int) -> Tensor:
    """[B, T, H, D] -> zero-padded [B, H, N, C, D] (T rounded up to a multiple of C)."""
    b, t, h, d = x.shape
    n = -(-t // c)
    x = F.pad(x, (0, 0, 0, 0, 0, n * c - t))  # [B, N*C, H, D]
    return x.reshape(b, n, c, h, d).permute(0, 3, 1, 2, 4)


def chunk_delta_rule_torch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Tensor | None = None,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    chunk_size: int = 64,
) -> Result:
    """Gated delta rule in chunks of ``chunk_size`` tokens; same contract as the naive form.

    Padding tokens carry k = 0, beta = 0 and g = 0, so they leave the state untouched and the
    last chunk of any length is exact. Differentiable by autograd in every input.
    """
    check_inputs(q, k, v, beta, g, initial_state, cu_seqlens)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if cu_seqlens is not None:
        return split_varlen(
            chunk_delta_rule_torch, q, k, v, beta, g, initial_state, output_final_state,
            cu_seqlens, scale=scale, chunk_size=chunk_size,
        )
    b, t, h, dk = q.shape
    dv, c = v.shape[-1], chunk_size
    gate = q.new_zeros(b, t, h, 1) if g is None else (g[..., None] if g.dim() == 3 else g)
    qc, kc, vc, gch = (_to_chunks(x.float(), c) for x in (q, k, v, gate))  # [B, H, N, C, *]
    bc = _to_chunks(beta.float()[..., None], c)[..., 0]  # [B, H, N, C]
    gcum = gch.cumsum(dim=-2)  # [B, H, N, C, Kg]: log decay from the chunk start
    s = q.new_zeros(b, h, dk, dv, dtype=torch.float32) if initial_state is None else initial_state.float()
    outs = []
    for n in range(qc.shape[2]):
        o, s = _chunk_step(qc[:, :, n], kc[:, :, n], vc[:, :, n], bc[:, :, n], gcum[:, :, n], s, scale)
        outs.append(o)  # [B, H, C, V]
    if not outs:  # an empty sequence: no output, the state passes through
        return v.new_zeros(b, 0, h, dv), (s if output_final_state else None)
    o = torch.stack(outs, dim=2).flatten(2, 3)[:, :, :t]  # [B, H, T, V]
    return o.transpose(1, 2).to(v.dtype), (s if output_final_state else None)
