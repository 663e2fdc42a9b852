"""Definitions shared by every backend: the memory MLP, the biases, the retention maps, the state.

These functions *define* the model (constants included); the backends differ only in how they
organise the computation (token loop with autograd gradients, chunked dual form, Triton).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import DeepMemoryConfig

NORM_EPS = 1e-5  # parameter-free LayerNorm on the MLP output
LP_EPS = 1e-6  # lp bias: |r| smoothed as sqrt(r^2 + LP_EPS)
ROBUST_EPS = 1e-6  # robust bias: ||r|| smoothed as sqrt(||r||^2 + ROBUST_EPS)

Weights = tuple[Tensor, ...]


class DeepMemoryState(NamedTuple):
    """Recurrent state per batch element and head.

    weights: per layer ``[B, H, d_in, d_out]``: the weights W for ``none | l2 | elastic_net``,
        the accumulator A for ``lq`` and the logits P for ``kl`` (the read weights are
        :func:`read_weights` of it).
    momentum: per layer ``[B, H, d_in, d_out]`` (the momentum Z), or None without momentum.
    """

    weights: Weights
    momentum: Weights | None


def accum_dtype(x: Tensor) -> torch.dtype:
    """Accumulation and state dtype: float64 for float64 inputs (used to measure rounding in
    tests), float32 for everything else."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------- activations and norm
def activation(x: Tensor, name: str) -> Tensor:
    """The activation between MLP layers."""
    if name == "gelu":
        return F.gelu(x)
    if name == "silu":
        return F.silu(x)
    if name == "relu":
        return torch.relu(x)
    return x


def activation_grad(x: Tensor, name: str) -> Tensor:
    """Derivative of :func:`activation` at ``x`` (written out so it can be differentiated)."""
    if name == "gelu":
        cdf = 0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))
        pdf = torch.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
        return cdf + x * pdf
    if name == "silu":
        s = torch.sigmoid(x)
        return s * (1.0 + x * (1.0 - s))
    if name == "relu":
        return (x > 0).to(x.dtype)
    return torch.ones_like(x)


def activation_backward(grad: Tensor, x: Tensor, name: str) -> Tensor:
    """``grad * activation'(x)``, twice differentiable; gelu and relu as one fused ATen kernel
    each (``gelu_backward`` / ``threshold_backward`` have derivatives; ``silu_backward`` has
    none, so silu uses :func:`activation_grad`)."""
    if name == "gelu":
        return torch.ops.aten.gelu_backward(grad, x)
    if name == "relu":
        return torch.ops.aten.threshold_backward(grad, x, 0)
    if name == "identity":
        return grad
    return grad * activation_grad(x, name)


def layer_norm(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Parameter-free LayerNorm over the last dim (biased variance, ``NORM_EPS`` inside the root):
    ``(x_hat, mean, rstd)``, one fused kernel with a twice-differentiable backward."""
    return torch.native_layer_norm(x, [x.shape[-1]], None, None, NORM_EPS)


def layer_norm_backward(dy: Tensor, x: Tensor, mean: Tensor, rstd: Tensor) -> Tensor:
    """Input gradient of :func:`layer_norm` at ``x`` given the output gradient ``dy``:
    ``rstd (dy - mean(dy) - x_hat mean(dy x_hat))``, as ATen's fused, differentiable kernel."""
    return torch.ops.aten.native_layer_norm_backward(
        dy, x, [x.shape[-1]], mean, rstd, None, None, [True, False, False])[0]


# ---------------------------------------------------------------- the memory
def mlp_output(weights: Weights, x: Tensor, cfg: DeepMemoryConfig, per_row: bool) -> Tensor:
    """``M(W; x)``. ``x: [..., R, d_in]``; weights ``[..., d_in, d_out]`` shared by the R rows,
    or (``per_row``) ``[..., R, d_in, d_out]``, one weight set per row."""
    h = x
    for i, w in enumerate(weights):
        h = (h.unsqueeze(-2) @ w).squeeze(-2) if per_row else h @ w  # [..., R, d_out]
        if i < len(weights) - 1:
            h = activation(h, cfg.activation)
    return finish_output(h, x, cfg)


def finish_output(y_raw: Tensor, x: Tensor, cfg: DeepMemoryConfig) -> Tensor:
    """Apply the optional output LayerNorm and residual to the last layer's output."""
    y = layer_norm(y_raw)[0] if cfg.norm else y_raw
    return x + y if cfg.residual else y


# ---------------------------------------------------------------- attentional bias
def bias_loss(y: Tensor, v: Tensor, cfg: DeepMemoryConfig, delta: Tensor | None) -> Tensor:
    """Per-token loss ``l(y; v)`` summed over the last dim. ``delta``: huber threshold [...]."""
    r = y - v  # [..., V]
    if cfg.bias == "dot":
        return -(y * v).sum(-1)
    if cfg.bias == "l2":
        return 0.5 * (r * r).sum(-1)
    if cfg.bias == "lp":
        return ((r * r + LP_EPS) ** (0.5 * cfg.p)).sum(-1) / cfg.p
    if cfg.bias == "huber":
        n = torch.sqrt((r * r).sum(-1))  # [...]
        return torch.where(n <= delta, 0.5 * n * n, delta * (n - 0.5 * delta))
    n = torch.sqrt((r * r).sum(-1) + ROBUST_EPS)  # robust
    rr = cfg.robust_radius
    return 0.5 * (r * r).sum(-1) + rr * n + 0.5 * rr * rr


def bias_grad(y: Tensor, v: Tensor, cfg: DeepMemoryConfig, delta: Tensor | None) -> Tensor:
    """``dl/dy`` of :func:`bias_loss`, written out. ``delta`` broadcasts against ``y[..., 0]``."""
    r = y - v  # [..., V]
    if cfg.bias == "dot":
        return -v
    if cfg.bias == "l2":
        return r
    if cfg.bias == "lp":
        return r * (r * r + LP_EPS) ** (0.5 * cfg.p - 1.0)
    if cfg.bias == "huber":
        n2 = (r * r).sum(-1, keepdim=True)  # [..., 1] = ||r||^2
        d = delta.unsqueeze(-1)  # [..., 1]
        return r * (d * torch.rsqrt(torch.maximum(n2, d * d)))  # r min(1, d/||r||), no sqrt(0)
    n = torch.sqrt((r * r).sum(-1, keepdim=True) + ROBUST_EPS)  # [..., 1]
    return r * (1.0 + cfg.robust_radius / n)


def token_loss(weights: Weights, k_t: Tensor, v_t: Tensor, d_t: Tensor | None, cfg: DeepMemoryConfig) -> Tensor:
    """Sum over batch and heads of ``l(W; k_t, v_t)`` for one token (``k_t, v_t: [B, H, D]``);
    its gradient in ``weights`` stays per (batch, head)."""
    y = mlp_output(weights, k_t.unsqueeze(-2), cfg, per_row=False).squeeze(-2)  # [B, H, V]
    return bias_loss(y, v_t, cfg, d_t).sum()


# ---------------------------------------------------------------- retention
def read_weights(state_weights: Weights, cfg: DeepMemoryConfig) -> Weights:
    """Map the recurrent state to the weights the memory reads with (identity unless lq/kl)."""
    if cfg.retention_global == "lq":
        return tuple(lq_normalise(a, cfg.q_norm) for a in state_weights)
    if cfg.retention_global == "kl":
        return tuple(cfg.kl_scale * torch.softmax(a, dim=-2) for a in state_weights)
    return state_weights


def lq_normalise(a: Tensor, q: float) -> Tensor:
    """Moneta: ``W = A / ||A||_q^(q-2)``, entrywise q-norm of each ``[d_in, d_out]`` matrix."""
    s = (a.abs() ** q).sum((-2, -1), keepdim=True)  # [..., 1, 1] = ||A||_q^q
    return a * s ** (-(q - 2.0) / q)


def soft_threshold(x: Tensor, gamma: Tensor) -> Tensor:
    """``S_gamma(x) = sign(x) max(|x| - gamma, 0)``; ``gamma`` broadcasts against ``x``."""
    return torch.sign(x) * torch.relu(x.abs() - gamma)


def log_decay(g: Tensor | None, lam: Tensor | None, cfg: DeepMemoryConfig, like: Tensor) -> Tensor:
    """Per-token multiplicative retention in log space: ``g_t + log(1 - lambda_t)`` [B, T, H]."""
    dt = accum_dtype(like)
    out = torch.zeros(like.shape[:3], dtype=dt, device=like.device)  # [B, T, H]
    if g is not None:
        out = out + g.to(dt)
    if cfg.retention_global == "l2":
        out = out + torch.log1p(-lam.to(dt))
    return out


# ---------------------------------------------------------------- inputs and state
def advance_state(
    state: DeepMemoryState, grads: Weights, log_a: Tensor, eta: Tensor, mu: Tensor | None,
    cfg: DeepMemoryConfig,
) -> DeepMemoryState:
    """Advance the state by one token given its gradient (a tuple like the weights).

    ``log_a``, ``eta``, ``mu``: [B, H]; retention ``exp(log_a)``, elastic net thresholds at
    ``eta * l1`` after the step.
    """
    a = torch.exp(log_a)[..., None, None]  # [B, H, 1, 1]
    e = eta[..., None, None]  # [B, H, 1, 1]
    new_w, new_z = [], []
    for i, (w, gr) in enumerate(zip(state.weights, grads)):
        if cfg.momentum:
            z = mu[..., None, None] * state.momentum[i] - e * gr  # [B, H, d_in, d_out]
            new_z.append(z)
            w = a * w + z
        else:
            w = a * w - e * gr
        if cfg.retention_global == "elastic_net":
            w = soft_threshold(w, e * cfg.l1)
        new_w.append(w)
    return DeepMemoryState(tuple(new_w), tuple(new_z) if cfg.momentum else None)


def check_inputs(
    q: Tensor, k: Tensor, v: Tensor, eta: Tensor, init_weights: Weights, cfg: DeepMemoryConfig,
    g: Tensor | None, mu: Tensor | None, lam: Tensor | None, delta: Tensor | None,
) -> None:
    """Raise ValueError for shapes or per-token tensors that do not fit ``cfg``."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    if k.shape != q.shape or v.shape[:3] != (B, T, H):
        raise ValueError(f"q, k must be [B, T, H, K] and v [B, T, H, V]; got {q.shape}, {k.shape}, {v.shape}")
    for name, x in (("eta", eta), ("g", g), ("mu", mu), ("lam", lam), ("delta", delta)):
        if x is not None and x.shape != (B, T, H):
            raise ValueError(f"{name} must be [B, T, H] = {(B, T, H)}, got {tuple(x.shape)}")
    if len(init_weights) != cfg.depth:
        raise ValueError(f"init_weights has {len(init_weights)} layers, cfg.depth is {cfg.depth}")
    dims = [K] + [w.shape[-1] for w in init_weights]
    for i, w in enumerate(init_weights):
        if w.shape != (H, dims[i], dims[i + 1]):
            raise ValueError(f"init_weights[{i}] must be [H, d_in, d_out] = {(H, dims[i], dims[i + 1])}, got {tuple(w.shape)}")
    if dims[-1] != V:
        raise ValueError(f"the last layer maps to {dims[-1]} but v has {V} channels")
    if cfg.hidden is not None and any(d != cfg.hidden for d in dims[1:-1]):
        raise ValueError(f"hidden widths {dims[1:-1]} differ from cfg.hidden={cfg.hidden}")
    if cfg.residual and K != V:
        raise ValueError(f"residual memory needs K == V, got K={K}, V={V}")
    _check_optional(cfg, mu, lam, delta)


def _check_optional(cfg: DeepMemoryConfig, mu: Tensor | None, lam: Tensor | None, delta: Tensor | None) -> None:
    if cfg.momentum != (mu is not None):
        raise ValueError("mu [B, T, H] must be given exactly when cfg.momentum is True")
    if (cfg.retention_global == "l2") != (lam is not None):
        raise ValueError("lam [B, T, H] must be given exactly when retention_global == 'l2'")
    wants_delta = cfg.bias == "huber" and cfg.huber_delta is None
    if wants_delta != (delta is not None):
        raise ValueError("delta [B, T, H] must be given exactly when bias='huber' and huber_delta is None")


def start_state(
    init_weights: Weights, cfg: DeepMemoryConfig, batch: int, initial_state: DeepMemoryState | None,
    dt: torch.dtype = torch.float32,
) -> DeepMemoryState:
    """The state before the first token in ``dt``: ``initial_state`` or the broadcast init."""
    if initial_state is not None:
        ws = tuple(w.to(dt) for w in initial_state.weights)
        zs = initial_state.momentum
    else:
        ws = tuple(w.to(dt).unsqueeze(0).expand(batch, *w.shape) for w in init_weights)
        zs = None
    if cfg.momentum and zs is None:
        zs = tuple(torch.zeros_like(w) for w in ws)
    elif cfg.momentum:
        zs = tuple(z.to(dt) for z in zs)
    return DeepMemoryState(ws, zs if cfg.momentum else None)


def per_token_delta(cfg: DeepMemoryConfig, delta: Tensor | None, like: Tensor) -> Tensor | None:
    """The huber threshold per token [B, T, H] in the accumulation dtype (None unless huber)."""
    if cfg.bias != "huber":
        return None
    if delta is not None:
        return delta.to(accum_dtype(like))
    return torch.full(like.shape[:3], float(cfg.huber_delta), dtype=accum_dtype(like), device=like.device)
