"""Ground truth: the deep memory recurrence token by token, gradients by ``torch.func.grad``.

For ``cfg.chunk_size == C`` every gradient inside a chunk of C tokens is taken at the weights
the chunk starts with; the state (weights, momentum) is still advanced token by token and token
t reads with the state after its own update. ``C == 1`` is the token-exact recurrence.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .config import DeepMemoryConfig
from .memory import (
    DeepMemoryState, Weights, accum_dtype, advance_state, check_inputs, log_decay, mlp_output, per_token_delta,
    read_weights, start_state, token_loss,
)


def recurrent_deep_memory(
    q: Tensor, k: Tensor, v: Tensor, eta: Tensor, init_weights: Weights, cfg: DeepMemoryConfig,
    g: Tensor | None = None, mu: Tensor | None = None, lam: Tensor | None = None,
    delta: Tensor | None = None, initial_state: DeepMemoryState | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, DeepMemoryState | None]:
    """Reference recurrence in float32. See README.md for the API and the math.

    q, k: [B, T, H, K]; v: [B, T, H, V]; eta, g, mu, lam, delta: [B, T, H];
    init_weights: per layer [H, d_in, d_out]. Returns (o [B, T, H, V] in v's dtype, state|None).
    """
    check_inputs(q, k, v, eta, init_weights, cfg, g, mu, lam, delta)
    B, T, H, _ = q.shape
    dt = accum_dtype(q)
    qf, kf, vf, ef = q.to(dt), k.to(dt), v.to(dt), eta.to(dt)
    log_a = log_decay(g, lam, cfg, q)  # [B, T, H]
    dl = per_token_delta(cfg, delta, q)  # [B, T, H] or None
    muf = mu.to(dt) if mu is not None else None
    grad_fn = torch.func.grad(token_loss)
    state = start_state(init_weights, cfg, B, initial_state, dt)
    outs = []
    for c0 in range(0, T, cfg.chunk_size):
        w0 = read_weights(state.weights, cfg)
        for t in range(c0, min(c0 + cfg.chunk_size, T)):
            d_t = dl[:, t] if dl is not None else None
            grads = grad_fn(w0, kf[:, t], vf[:, t], d_t, cfg)  # per layer [B, H, d_in, d_out]
            m_t = muf[:, t] if muf is not None else None
            state = advance_state(state, grads, log_a[:, t], ef[:, t], m_t, cfg)
            w_t = read_weights(state.weights, cfg)
            o_t = mlp_output(w_t, qf[:, t].unsqueeze(-2), cfg, per_row=False)  # [B, H, 1, V]
            outs.append(o_t.squeeze(-2))
    o = torch.stack(outs, dim=1).to(v.dtype)  # [B, T, H, V]
    return o, (state if output_final_state else None)
