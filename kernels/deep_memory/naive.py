"""Ground truth: the deep memory recurrence token by token, gradients by ``torch.func.grad``.

For ``cfg.chunk_size == C`` every gradient inside a chunk of C tokens is taken at the weights
the chunk starts with; the state (weights, momentum) is still advanced token by token and token
t reads with the state after its own update. ``C == 1`` is the token-exact recurrence.

With ``cfg.step == S > 1`` the state advances once per S tokens, by the sum of their
eta-weighted gradients (momentum and retention of the step's last token); a token reads with
the state after the last step that ended at or before it. A call that ends inside a step
applies that partial step to the final state after its tokens have read.
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
    S, outs, pending = cfg.step, [], None
    for c0 in range(0, T, cfg.chunk_size):
        w0 = read_weights(state.weights, cfg)
        for t in range(c0, min(c0 + cfg.chunk_size, T)):
            d_t = dl[:, t] if dl is not None else None
            grads = grad_fn(w0, kf[:, t], vf[:, t], d_t, cfg)  # per layer [B, H, d_in, d_out]
            m_t = muf[:, t] if muf is not None else None
            if S == 1:
                state = advance_state(state, grads, log_a[:, t], ef[:, t], m_t, cfg)
                outs.append(_read(state, qf[:, t], cfg))
                continue
            part = tuple(ef[:, t, :, None, None] * gr for gr in grads)  # eta_t * grad
            pending = part if pending is None else tuple(p + x for p, x in zip(pending, part))
            full = (t + 1 - c0) % S == 0
            if not full:  # reads the weights after the last whole step
                outs.append(_read(state, qf[:, t], cfg))
            if full or t + 1 == T:  # a step ends (a partial one only at the end of the call)
                state = advance_state(state, pending, log_a[:, t], torch.ones_like(ef[:, t]), m_t, cfg)
                pending = None
            if full:
                outs.append(_read(state, qf[:, t], cfg))
    o = torch.stack(outs, dim=1).to(v.dtype)  # [B, T, H, V]
    return o, (state if output_final_state else None)


def _read(state: DeepMemoryState, q_t: Tensor, cfg: DeepMemoryConfig) -> Tensor:
    """``M(W; q_t)`` with the weights of ``state``: q_t [B, H, K] -> [B, H, V]."""
    return mlp_output(read_weights(state.weights, cfg), q_t.unsqueeze(-2), cfg, per_row=False).squeeze(-2)
