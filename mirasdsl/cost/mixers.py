"""Analytic cost of one tuple mixer: parameters, forward FLOPs per token, state, KV, activations.

Conventions (held against the built module and FlopCounterMode in tests/cost):
- parameters are exact: they must equal ``sum(p.numel())`` of the block that ``blocks`` builds;
- FLOPs count matrix products only (2 per multiply-add), as ``torch.utils.flop_counter`` does;
  elementwise work (gates, norms, activations, softmax) is left out;
- chunked families are counted the way the chunked algorithm computes them (full C×C tiles);
- softmax attention counts the causal half of the score matrix (what flash kernels compute);
- state is fp32 per sequence; the KV cache is in the activation dtype.
"""
from __future__ import annotations

from mirasdsl.graph.nodes import MixerNode
from mirasdsl.spec.axes import update_step
from mirasdsl.spec.families import ATTENTION, DEEP, DELTA, GLA

CHUNK = 64  # chunk size of the linear families' chunked kernels


def projection_shapes(n: MixerNode) -> list[tuple[int, int]]:
    """(in, out) of every dense projection of the mixer, in the order blocks build them."""
    m, d, h, p, v = n.mixer, n.d_model, n.heads, n.proj_dim, n.value_dim
    kv = n.kv_heads
    shapes = [(d, h * p), (d, kv * p), (d, kv * v), (h * v, d)]  # q, k, v, o
    if m.features.output_gate != "none":
        shapes.append((d, h * v))
    return shapes


def scalar_gates(n: MixerNode) -> list[str]:
    """The data-dependent per-head scalars, each a ``Linear(d, heads)`` with bias, in build order."""
    m = n.mixer
    names = []
    if m.step == "data_dependent":
        names.append("step")
    if m.retention.local.kind == "gated" and m.retention.local.granularity == "head":
        names.append("decay")
    if m.update.kind == "gd_momentum" and m.update.momentum == "data_dependent":
        names.append("momentum")
    if m.retention.global_.kind == "l2" and m.retention.global_.strength == "data_dependent":
        names.append("weight_decay")
    if m.bias.kind == "huber" and m.bias.delta == "data_dependent":
        names.append("huber_delta")
    return names


def gate_parts(n: MixerNode) -> tuple[int, int]:
    """(matmul weights, other parameters: biases and A_log) of every gate of the mixer."""
    m, d, h = n.mixer, n.d_model, n.heads
    gates = scalar_gates(n)
    weights, other = d * h * len(gates), h * len(gates)
    local = m.retention.local
    if local.kind == "gated" and local.granularity == "channel":
        weights += d * local.rank + local.rank * h * n.state_dim  # low-rank Linear(d, r) → Linear(r, h·K)
        other += h * n.state_dim
    if local.kind == "gated" and local.parameterization == "softplus":
        other += h  # A_log per head
    return weights, other


def memory_weight_shapes(n: MixerNode) -> list[tuple[int, int]]:
    """Per-head (in, out) of the deep memory's initial weights (learned, shared over the batch)."""
    m = n.mixer
    if n.family != DEEP:
        return []
    p, v = n.proj_dim, n.value_dim
    depth = m.memory.depth if m.memory.kind == "mlp" else 1
    if depth == 1:
        return [(p, v)]
    return [(p, n.hidden)] + [(n.hidden, n.hidden)] * (depth - 2) + [(n.hidden, v)]


def conv_channels(n: MixerNode) -> int:
    return n.heads * n.proj_dim + n.kv_heads * (n.proj_dim + n.value_dim)


def mixer_params(n: MixerNode) -> int:
    """Exact parameter count of the block built for this node."""
    m, h, p, v = n.mixer, n.heads, n.proj_dim, n.value_dim
    total = sum(i * o for i, o in projection_shapes(n))
    total += conv_channels(n) * m.features.short_conv
    total += sum(gate_parts(n))
    total += h * sum(i * o for i, o in memory_weight_shapes(n))
    if m.features.feature_map.kind == "hedgehog":
        total += 2 * h * p * m.features.feature_map.dim
    if m.features.qk_norm == "rms":
        total += 2 * p
    total += {"none": 0, "rmsnorm": v, "layernorm": 2 * v}[m.features.output_norm]
    return total


def state_value_dim(n: MixerNode) -> int:
    """Value dim of the recurrent state: + 1 for the linear-attention denominator (a ones column)."""
    return n.value_dim + (1 if n.mixer.features.normalize == "denominator" else 0)


def _core_flops_linear(n: MixerNode, context: int) -> float:
    """Per-token matmul FLOPs of the chunked gla / delta-rule core, all heads."""
    c = min(CHUNK, context)
    k, v = n.state_dim, state_value_dim(n)
    if n.mixer.memory.kind == "vector":
        k, v = 1, 1  # elementwise: H·V independent 1×1 states
        heads = n.heads * n.value_dim
    else:
        heads = n.heads
    if n.family == GLA:
        macs = c * k + c * v + 2 * k * v  # QKᵀ and AV in-chunk; q·S and kᵀv across chunks
    else:
        # + KKᵀ, T·K, T·V and W·S; the UT transform's triangular solve (~C³/3 per chunk) is a
        # substitution, not a matrix product, and is left out like other non-matmul work
        macs = 3 * c * k + 2 * c * v + 3 * k * v
    return 2.0 * heads * macs


def _core_flops_deep(n: MixerNode, context: int) -> float:
    """Per-token matmul FLOPs of chunk-wise deep memory, as kernels/deep_memory/chunk_torch.py computes them.

    Per chunk of C tokens and per head, with layers (d_i → o_i):
    - gradients at W_0 by hand-written backprop: forward ``C·Σ d_i o_i`` + backward ``C·Σ_{i≥1} d_i o_i``;
    - dual form (linear retention): state carried by outer-product sums ``C·Σ d_i o_i`` (×2 with
      momentum), read-out ``C·Σ (d_i o_i·(2 with momentum, else 1) + C·d_i + C·o_i)``, and with
      momentum the decay/momentum coefficient products ``C² + C³``;
    - nonlinear read (lq, kl): every token's state from the dual coefficients at once
      ``C²·Σ d_i o_i`` per chunk (a product over the chunk's tokens, not a sequential update), the
      chunk-end state ``C·Σ d_i o_i`` (×2 with momentum), with momentum the coefficient products
      ``C² + C³``, and each token reads through its own weights ``Σ d_i o_i``;
    - elastic net: token by token (the per-token outer products are elementwise, not matmuls),
      each token reading through its own weights ``Σ d_i o_i``.
    """
    m = n.mixer
    if update_step(m.update) > 1:
        return _core_flops_steps(n, context)
    c = min(m.update.chunk or 1, context)
    shapes = memory_weight_shapes(n)
    dense = sum(i * o for i, o in shapes)
    macs = c * dense + c * sum(i * o for i, o in shapes[1:])  # gradients at the chunk's start
    momentum = m.update.kind == "gd_momentum"
    factor = 2 if momentum else 1
    if m.retention.global_.kind == "elastic_net":
        macs += c * dense  # per-token read-out through materialised weights
    elif m.retention.global_.kind in ("lq", "kl"):
        macs += c * dense + c * c * dense + c * dense * factor  # read-out, per-token and end states
        if momentum:
            macs += c * c + c ** 3
    else:
        macs += c * dense * factor  # carry the state to the chunk's end
        macs += sum(c * i * o * factor + c * c * (i + o) for i, o in shapes)  # dual-form read-out
        if momentum:
            macs += c * c + c ** 3
    return 2.0 * n.heads * macs / c


def _core_flops_steps(n: MixerNode, context: int) -> float:
    """Per-token matmul FLOPs of deep memory with steps of S tokens, as
    kernels/deep_memory/steps.py computes them. Per span of R = chunk tokens (N = ⌈R / S⌉ steps,
    padded to N·S rows) and per head: gradients at the span's start weights (forward
    ``R·Σ d_i o_i``, backward ``R·Σ_{i≥1} d_i o_i``); per-step gradients ``N·S·Σ d_i o_i``; the
    step recurrence ``N²·Σ d_i o_i`` (+ ``N² + N³`` coefficient products with momentum); reads in
    N + 1 groups of S (the queries shifted by one token): group 0 through the start state ``S·Σ
    d_i o_i``, the others through the per-step sums ``N·S·Σ d_i o_i`` and the start state's share
    ``N·S·Σ d_i o_i`` (×2 with momentum), or through whole per-step states ``(N + 1)·S·Σ d_i o_i``
    for a nonlinear read map (lq, kl)."""
    m = n.mixer
    shapes = memory_weight_shapes(n)
    dense = sum(i * o for i, o in shapes)
    r, s = min(m.update.chunk, context), m.update.step
    steps = -(-r // s)
    momentum = m.update.kind == "gd_momentum"
    macs = r * dense + r * sum(i * o for i, o in shapes[1:]) + steps * s * dense + steps * steps * dense
    if m.retention.global_.kind in ("lq", "kl"):
        macs += (steps + 1) * s * dense
    else:  # group 0 through W_0; groups 1..N: the sums and the start state's share
        macs += s * dense + steps * s * dense + steps * s * dense * (2 if momentum else 1)
    if momentum:
        macs += steps * steps + steps ** 3
    return 2.0 * n.heads * macs / r


def attended_keys(context: int, window: int | None) -> float:
    """Mean number of keys a query attends to over a causal sequence of ``context`` tokens."""
    if window is None or window >= context:
        return (context + 1) / 2
    w = window
    return (w * (w + 1) / 2 + (context - w) * w) / context


def mixer_fwd_flops(n: MixerNode, context: int) -> float:
    """Forward matmul FLOPs per token at a sequence length ``context``."""
    m = n.mixer
    flops = 2.0 * sum(i * o for i, o in projection_shapes(n))
    flops += 2.0 * conv_channels(n) * m.features.short_conv
    flops += 2.0 * gate_parts(n)[0]
    fm = m.features.feature_map
    if fm.kind in ("hedgehog", "performer"):
        width = fm.dim if fm.kind == "hedgehog" else fm.features
        flops += 2.0 * 2 * n.heads * n.proj_dim * width
    if n.family in (GLA, DELTA):
        flops += _core_flops_linear(n, context)
    elif n.family == DEEP:
        flops += _core_flops_deep(n, context)
    elif n.family == ATTENTION:
        flops += 2.0 * n.heads * (n.proj_dim + n.value_dim) * attended_keys(context, m.memory.window)
    return flops


def state_bytes(n: MixerNode) -> int:
    """Recurrent state carried between tokens at decode time, per sequence (fp32)."""
    m = n.mixer
    conv = 4 * conv_channels(n) * max(0, m.features.short_conv - 1)
    if n.family == ATTENTION:
        return conv
    if n.family == DEEP:
        weights = n.heads * sum(i * o for i, o in memory_weight_shapes(n))
        # current weights, + momentum, + the chunk's starting weights when chunk-wise, + the
        # open step's gradient sum with steps of several tokens
        copies = (1 + (m.update.kind == "gd_momentum") + ((m.update.chunk or 1) > 1)
                  + (update_step(m.update) > 1))
        return 4 * weights * copies + conv
    if m.memory.kind == "vector":
        return 4 * n.heads * n.value_dim + conv
    return 4 * n.heads * n.state_dim * state_value_dim(n) + conv


def kv_bytes(n: MixerNode, context: int, dtype_bytes: int) -> tuple[float, float]:
    """(KV-cache bytes per token while it grows, bytes held at ``context``) per sequence."""
    if n.family != ATTENTION:
        return 0.0, 0.0
    per_token = dtype_bytes * n.kv_heads * (n.proj_dim + n.value_dim)
    window = n.mixer.memory.window
    held = min(context, window) if window else context
    return float(per_token if not window or context < window else 0), float(per_token * held)


def activation_bytes(n: MixerNode, batch: int, seq_len: int, dtype_bytes: int) -> float:
    """Tensors a training step keeps for backward (estimate): inputs, q/k/v, gates, outputs, states."""
    m, h, p, v = n.mixer, n.heads, n.proj_dim, n.value_dim
    per_token = n.d_model + h * (2 * p + v) + h * v  # block input, q k v, read-out
    if m.features.short_conv:
        per_token += h * (2 * p + v)  # pre-convolution q k v
    if m.features.output_gate != "none":
        per_token += h * v
    if m.features.feature_map.kind != "identity":
        per_token += 2 * h * n.state_dim
    total = float(batch * seq_len * per_token * dtype_bytes)
    if n.family in (GLA, DELTA):  # per-chunk states kept for the backward
        chunks = -(-seq_len // CHUNK)
        total += 4.0 * batch * chunks * h * n.state_dim * v
    if n.family == DEEP and update_step(m.update) > 1:  # per-step gradients and sums
        steps = -(-seq_len // m.update.step)
        total += 2 * 4.0 * batch * steps * h * sum(i * o for i, o in memory_weight_shapes(n))
    elif n.family == DEEP:
        chunks = -(-seq_len // (m.update.chunk or 1))
        total += 4.0 * batch * min(chunks, seq_len) * h * sum(i * o for i, o in memory_weight_shapes(n))
    return total
