"""Deep-memory mixer: an MLP memory per head trained online (TTT, Titans, Moneta, Yaad, Memora).

Decoding a chunk-wise model token by token needs the chunk's starting weights (every gradient of
a chunk is taken there) as well as the current ones: the state holds both, and the position in
the chunk. Token-exact models (chunk 1) keep one copy. With steps of several tokens the state
also holds the open step's gradient sum.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mirasdsl.blocks.base import ProjectedMixer, State
from mirasdsl.cost.mixers import memory_weight_shapes
from mirasdsl.graph.nodes import MixerNode
from mirasdsl.kernels.deep_memory import DeepMemoryConfig, deep_memory
from mirasdsl.kernels.deep_memory import memory as dm
from mirasdsl.spec.axes import update_step


def memory_config(node: MixerNode) -> DeepMemoryConfig:
    """The kernel's config for a deep-memory node (spec axes → kernel fields)."""
    m = node.mixer
    mem, bias, ret = m.memory, m.bias, m.retention.global_
    depth = mem.depth if mem.kind == "mlp" else 1
    return DeepMemoryConfig(
        depth=depth, hidden=node.hidden if depth >= 2 else None,
        activation=mem.activation if mem.kind == "mlp" else "identity",
        residual=mem.kind == "mlp" and mem.residual, norm=mem.kind == "mlp" and mem.norm,
        bias=bias.kind, p=bias.p if bias.kind == "lp" else None,
        huber_delta=bias.delta if bias.kind == "huber" and bias.delta != "data_dependent" else None,
        robust_radius=bias.radius if bias.kind == "robust" else None,
        retention_global=ret.kind if ret.kind != "elastic_net" or ret.l1 > 0 else "none",
        q_norm=ret.q if ret.kind == "lq" else None, kl_scale=ret.scale if ret.kind == "kl" else None,
        l1=ret.l1 if ret.kind == "elastic_net" and ret.l1 > 0 else None,
        momentum=m.update.kind == "gd_momentum", chunk_size=getattr(m.update, "chunk", None) or 1,
        step=update_step(m.update),
    )


class DeepMemoryMixer(ProjectedMixer):
    """q, k, v projections around the deep-memory kernel; per-head initial weights are learned."""

    def __init__(self, node: MixerNode, layer_seed: int = 0) -> None:
        super().__init__(node, layer_seed)
        self.cfg = memory_config(node)
        self.init_weights = nn.ParameterList(
            nn.Parameter(torch.randn(node.heads, i, o) / math.sqrt(i)) for i, o in memory_weight_shapes(node))

    def _scalars(self, x: Tensor) -> dict[str, Tensor | None]:
        m, B, T = self.node.mixer, x.shape[0], x.shape[1]
        full = lambda value: x.new_full((B, T, self.h), float(value))  # noqa: E731
        eta = self.gates.step(x)
        g = self.gates.log_decay(x)
        ret = m.retention.global_
        if ret.kind == "elastic_net" and ret.l2 > 0:
            g = (g if g is not None else full(0.0)) + math.log1p(-ret.l2)
        mu = self.gates.momentum(x)
        if mu is None and self.cfg.momentum:
            mu = full(m.update.momentum)
        lam = self.gates.weight_decay(x)
        if lam is None and ret.kind == "l2":
            lam = full(ret.strength)
        return {"eta": eta if eta is not None else full(1.0), "g": g, "mu": mu, "lam": lam,
                "delta": self.gates.huber_delta(x)}

    def forward(self, x: Tensor, state: State | None = None, return_state: bool = False) -> tuple[Tensor, State]:
        state = dict(state or {})
        q, k, v, _ = self.project(x, state)  # [B, T, H, K], [B, T, H, K], [B, T, H, V]
        s = self._scalars(x)
        weights = tuple(self.init_weights)
        if not return_state and "mem" not in state:
            o, _ = deep_memory(q, k, v, s["eta"], weights, self.cfg, s["g"], s["mu"], s["lam"], s["delta"])
            return self.read_out(o, x), state
        o = self._stateful(q, k, v, s, weights, state)
        return self.read_out(o, x), state

    def _stateful(self, q: Tensor, k: Tensor, v: Tensor, s: dict, weights: tuple, state: State) -> Tensor:
        """Whole chunks through the kernel from a chunk boundary, the rest token by token."""
        C, T = self.cfg.chunk_size, q.shape[1]
        outs, t = [], 0
        if state.get("in_chunk", 0) == 0:
            whole = (T // C) * C
            if whole:
                part = {n: (x[:, :whole] if x is not None else None) for n, x in s.items()}
                o, mem = deep_memory(q[:, :whole], k[:, :whole], v[:, :whole], part["eta"], weights, self.cfg,
                                     part["g"], part["mu"], part["lam"], part["delta"],
                                     initial_state=state.get("mem"), output_final_state=True)
                outs.append(o)
                state["mem"], state["w0"], state["in_chunk"] = mem, mem, 0
                t = whole
        for i in range(t, T):
            outs.append(self._token(q[:, i], k[:, i], v[:, i], {n: (x[:, i] if x is not None else None)
                                                                 for n, x in s.items()}, weights, state))
        return torch.cat(outs, dim=1)

    def _token(self, q: Tensor, k: Tensor, v: Tensor, s: dict, weights: tuple, state: State) -> Tensor:
        """One token of the chunk-wise recurrence: gradient at the chunk's start weights."""
        cfg = self.cfg
        if "mem" not in state:
            state["mem"] = dm.start_state(weights, cfg, q.shape[0], None)
            state["w0"], state["in_chunk"] = state["mem"], 0
        w0 = dm.read_weights(state["w0"].weights, cfg)
        delta = s["delta"].float() if s["delta"] is not None else (
            torch.full(q.shape[:2], cfg.huber_delta, device=q.device) if cfg.bias == "huber" else None)
        grads = torch.func.grad(dm.token_loss)(w0, k.float(), v.float(), delta, cfg)
        g = s["g"].float() if s["g"] is not None else None
        lam = s["lam"].float() if s["lam"] is not None else None
        log_a = dm.log_decay(g[:, None] if g is not None else None, lam[:, None] if lam is not None else None,
                             cfg, q.unsqueeze(1))[:, 0]  # [B, H]
        mu = s["mu"].float() if s["mu"] is not None else None
        mem = self._advance(state, grads, log_a, s["eta"].float(), mu)
        o = dm.mlp_output(dm.read_weights(mem.weights, cfg), q.float().unsqueeze(-2), cfg, per_row=False)
        state["mem"], state["in_chunk"] = mem, state["in_chunk"] + 1
        if state["in_chunk"] == cfg.chunk_size:
            state["w0"], state["in_chunk"] = mem, 0
        return o.transpose(1, 2).to(v.dtype)  # [B, 1, H, V]

    def _advance(self, state: State, grads: tuple, log_a: Tensor, eta: Tensor, mu: Tensor | None):
        """The memory after this token: a step per token, or (``step > 1``) the token's
        eta-weighted gradient added to the open step's sum and a step when the step is whole."""
        cfg = self.cfg
        if cfg.step == 1:
            return dm.advance_state(state["mem"], grads, log_a, eta, mu, cfg)
        open_sum = tuple(s + eta[..., None, None] * g  # [B, H, d_in, d_out] each
                         for s, g in zip(state.get("open_step") or [0.0] * len(grads), grads))
        if (state["in_chunk"] + 1) % cfg.step:
            state["open_step"] = open_sum
            return state["mem"]
        state["open_step"] = tuple(torch.zeros_like(s) for s in open_sum)  # held at a fixed size
        return dm.advance_state(state["mem"], open_sum, log_a, torch.ones_like(eta), mu, cfg)
