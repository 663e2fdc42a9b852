"""Token-by-token gated delta rule: the float32 ground truth of this family.

State convention ``S: [B, H, K, V]`` (see kernels/README.md). With ``alpha_t = exp(g_t)``:

    S'_t = diag(alpha_t) S_{t-1}
    S_t  = S'_t + beta_t k_t (v_t - S'_tᵀ k_t)ᵀ
    o_t  = scale · S_tᵀ q_t
"""
from __future__ import annotations

import torch

from ._common import Result, Tensor, check_inputs, split_varlen


def recurrent_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Tensor | None = None,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
) -> Result:
    """Gated delta rule, one token at a time in float32; returns ``(o, final_state)``.

    q, k: [B, T, H, K]; v: [B, T, H, V]; beta: [B, T, H]; g (log of the decay): None,
    [B, T, H] or [B, T, H, K]. With ``cu_seqlens`` ([N+1], B == 1) each packed sequence starts
    from its own state. ``o`` has v's dtype, the final state is float32 [N or B, H, K, V].
    """
    check_inputs(q, k, v, beta, g, initial_state, cu_seqlens)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if cu_seqlens is not None:
        return split_varlen(
            recurrent_delta_rule, q, k, v, beta, g, initial_state, output_final_state,
            cu_seqlens, scale=scale,
        )
    b, t, h, dk = q.shape
    dv, out_dtype = v.shape[-1], v.dtype
    q, k, v, beta = (x.float() for x in (q, k, v, beta))
    s = q.new_zeros(b, h, dk, dv) if initial_state is None else initial_state.float()  # [B, H, K, V]
    outs = []
    for i in range(t):
        if g is not None:
            alpha = g[:, i].float().exp()  # [B, H] or [B, H, K]
            s = s * (alpha[..., None, None] if g.dim() == 3 else alpha[..., None])
        k_i, v_i = k[:, i], v[:, i]  # [B, H, K], [B, H, V]
        pred = torch.einsum("bhk,bhkv->bhv", k_i, s)  # [B, H, V]: what the memory recalls
        err = beta[:, i, :, None] * (v_i - pred)  # [B, H, V]
        s = s + k_i[..., :, None] * err[..., None, :]  # [B, H, K, V]
        outs.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, i], s))  # [B, H, V]
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(b, 0, h, dv)  # [B, T, H, V]
    return o.to(out_dtype), (s if output_final_state else None)
