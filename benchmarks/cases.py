"""The benchmark cases: each kernel family of ours beside the peer that computes the same thing.

Inputs are bf16 (gates float32, in log space, as fla takes them), drawn fresh for every
implementation from the same seed, so ours and the peer see identical values. Keys of the delta
rule families are L2-normalised (the delta rule's stability condition), as in fla's own tests.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from harness import Prepared, Unavailable

BF16 = torch.bfloat16
DEVICE = "cuda"  # set_device("cpu") for a dry run of the plumbing at tiny shapes


@dataclass(frozen=True)
class Shape:
    """Batch, time, heads, head dim (keys and values alike)."""

    name: str
    B: int
    T: int
    H: int
    D: int

    def dims(self) -> dict[str, int]:
        """The sizes, for the JSON rows."""
        return {"B": self.B, "T": self.T, "H": self.H, "D": self.D}


SHAPES = {
    "S": Shape("S", 8, 4096, 16, 128),  # 32k tokens
    "L": Shape("L", 2, 16384, 16, 128),
}
# titans-pytorch's NeuralMemory at the size it was measured: dim 1024 = 8 heads x 128
MEMORY_SHAPE = Shape("M", 4, 4096, 8, 128)
SWA_WINDOW = 2048
TINY = {"S": Shape("S", 2, 64, 2, 16), "L": Shape("L", 1, 96, 2, 16)}  # dry run only
TINY_MEMORY = Shape("M", 1, 64, 2, 16)

Inputs = dict[str, Tensor]


def set_device(device: str) -> None:
    """Where the inputs are made (the benchmark proper runs on "cuda")."""
    global DEVICE
    DEVICE = device


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device=DEVICE).manual_seed(seed)


def _rand(*shape: int, dtype: torch.dtype = BF16, g: torch.Generator) -> Tensor:
    return torch.randn(*shape, generator=g, device=DEVICE, dtype=dtype)


def _uniform(*shape: int, g: torch.Generator) -> Tensor:
    return torch.rand(*shape, generator=g, device=DEVICE)


def make_inputs(s: Shape, kind: str, seed: int = 0) -> Inputs:
    """Fresh random inputs for a family: ``kind`` picks the gates and normalisation."""
    g = _gen(seed)
    x: Inputs = {n: _rand(s.B, s.T, s.H, s.D, g=g) for n in ("q", "k", "v")}  # [B, T, H, D]
    if kind in ("delta", "gated_delta", "kda"):
        x["k"] = F.normalize(x["k"].float(), dim=-1).to(BF16)
        x["beta"] = _uniform(s.B, s.T, s.H, g=g).to(BF16)  # [B, T, H]
    if kind == "kda":
        x["q"] = F.normalize(x["q"].float(), dim=-1).to(BF16)
    if kind in ("simple_gla", "gated_delta"):
        x["g"] = F.logsigmoid(_rand(s.B, s.T, s.H, dtype=torch.float32, g=g))  # [B, T, H]
    if kind in ("gla", "kda"):
        x["g"] = F.logsigmoid(_rand(s.B, s.T, s.H, s.D, dtype=torch.float32, g=g) + 3)
    for t in x.values():
        t.requires_grad_(True)
    return x


def io_bytes(x: Inputs) -> int:
    """Bytes read once (every input) plus the output written once (shaped like v)."""
    return sum(t.numel() * t.element_size() for t in x.values()) + x["v"].numel() * 2


def prepared(x: Inputs, fn: Callable[[], object]) -> Prepared:
    """Wrap a call over inputs ``x``: leaves are all of them."""
    return Prepared(fn=fn, leaves=list(x.values()), floor_bytes=io_bytes(x))


def load(module: str, attr: str) -> Callable[..., object]:
    """``module.attr``, or :class:`Unavailable` saying which import failed. fla's kernels get
    their Triton cache keys formed right after the import, in module order (``jit_keys``), so
    they match a precompiled cache (``precompile.py``) whichever op runs first."""
    try:
        found = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise Unavailable(f"{module}.{attr}: {type(exc).__name__}: {exc}") from exc
    if module.startswith("fla."):
        from mirasdsl.kernels.jit_keys import settle_package

        settle_package("fla")
    return found


# ------------------------------------------------------------------ linear-attention families


def ours_gla(s: Shape, kind: str) -> Prepared:
    """Our gated linear attention (scalar gate for simple_gla, per channel for gla); its
    reference is the PyTorch chunk form (``backend="chunk"``)."""
    f = load("mirasdsl.kernels.gla", "gated_linear_attention")
    x = make_inputs(s, kind)
    prep = prepared(x, lambda: f(x["q"], x["k"], x["v"], g=x["g"]))
    return replace(prep, reference=lambda L: f(*L[:3], g=L[3], backend="chunk"))  # L: q, k, v, g


def ours_delta(s: Shape, kind: str) -> Prepared:
    """Our delta rule: plain, scalar-gated (GDN) or per-channel-gated (KDA); its reference is
    the PyTorch chunk form."""
    f = load("mirasdsl.kernels.delta", "delta_rule")
    x = make_inputs(s, kind)
    prep = prepared(x, lambda: f(x["q"], x["k"], x["v"], x["beta"], g=x.get("g")))
    return replace(prep, reference=lambda L: f(*L[:4], g=L[4] if len(L) > 4 else None, backend="chunk"))


def fla_op(name: str, s: Shape, kind: str) -> Prepared:
    """fla's chunk kernel ``fla.ops.<name>``, called as fla documents it."""
    module, attr = {
        "simple_gla": ("fla.ops.simple_gla", "chunk_simple_gla"),
        "gla": ("fla.ops.gla", "chunk_gla"),
        "delta": ("fla.ops.delta_rule", "chunk_delta_rule"),
        "gated_delta": ("fla.ops.gated_delta_rule", "chunk_gated_delta_rule"),
        "kda": ("fla.ops.kda", "chunk_kda"),
    }[name]
    f = load(module, attr)
    x = make_inputs(s, kind)
    q, k, v = x["q"], x["k"], x["v"]
    calls = {
        "simple_gla": lambda: f(q, k, v, g=x["g"]),
        "gla": lambda: f(q, k, v, x["g"]),
        "delta": lambda: f(q, k, v, x["beta"]),
        "gated_delta": lambda: f(q, k, v, x["g"], x["beta"]),
        "kda": lambda: f(q, k, v, x["g"], x["beta"]),
    }
    return prepared(x, calls[name])


# ------------------------------------------------------------------------- softmax attention


def ours_attention(s: Shape, window: int | None = None, alibi: bool = False) -> Prepared:
    """Our attention entry point ([B, T, H, D]; SDPA, or flex for window/ALiBi on CUDA)."""
    attention = load("mirasdsl.kernels.attention", "attention")
    slopes_fn = load("mirasdsl.kernels.attention", "alibi_slopes")
    x = make_inputs(s, "attention")
    slopes = slopes_fn(s.H, device=DEVICE) if alibi else None
    return prepared(x, lambda: attention(x["q"], x["k"], x["v"], window=window,
                                         alibi_slopes=slopes))


def torch_sdpa(s: Shape, window: int | None = None, alibi: bool = False) -> Prepared:
    """PyTorch SDPA in its native [B, H, T, D] layout: is_causal, or an explicit mask/bias."""
    x = make_inputs(s, "attention")
    q, k, v = (x[n].detach().transpose(1, 2).contiguous().requires_grad_(True) for n in "qkv")
    mask = None
    if window is not None or alibi:
        t = torch.arange(s.T, device=DEVICE)
        dist = t[:, None] - t[None, :]  # [T, T]
        mask = (dist >= 0) & (dist < (window or s.T + 1))  # [T, T] bool
        if alibi:
            slopes = load("mirasdsl.kernels.attention", "alibi_slopes")(s.H, device=DEVICE)
            bias = -slopes[:, None, None] * dist.float()  # [H, T, T]
            mask = bias.masked_fill(~mask, float("-inf")).to(BF16)[None]  # [1, H, T, T]
    causal = mask is None
    x = {"q": q, "k": k, "v": v}
    return prepared(x, lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                              is_causal=causal))


# ------------------------------------------------------------------------------ deep memory


def module_case(module: torch.nn.Module, x: Tensor) -> Prepared:
    """A whole mixer module called on ``x [B, T, d]`` as a model calls it (bf16 autocast,
    float32 weights); its first output is timed, ``x`` and the parameters are the leaves."""
    def call() -> Tensor:
        with torch.autocast(DEVICE, dtype=BF16):
            return module(x)[0]

    return Prepared(fn=call, leaves=[x, *module.parameters()], floor_bytes=0)


def titans_memory(s: Shape, chunk: int) -> Prepared:
    """titans-pytorch NeuralMemory, defaults (depth-2 MLP, expansion 4, momentum); dim = H * D.

    It includes its own q/k/v projections, gates and output path, so it does more than our
    kernel does: the ratio bounds what a block built on our kernel must beat.
    """
    NeuralMemory = load("titans_pytorch", "NeuralMemory")
    dim = s.H * s.D
    mem = NeuralMemory(dim=dim, chunk_size=chunk, heads=s.H, dim_head=s.D).to(DEVICE)
    x = _rand(s.B, s.T, dim, g=_gen(0)).requires_grad_(True)  # [B, T, H * D]
    return module_case(mem, x)


def mixer_from_spec(data: dict, pick: Callable[[object], bool] = lambda node: True) -> torch.nn.Module:
    """The first mixer node of spec ``data`` that ``pick`` accepts, built as ``miras compile``
    builds it (``mirasdsl.blocks.registry.make_mixer``)."""
    spec_from_data = load("mirasdsl.spec", "spec_from_data")
    lower = load("mirasdsl.graph.lower", "lower")
    make_mixer = load("mirasdsl.blocks.registry", "make_mixer")
    MixerNode = load("mirasdsl.graph.nodes", "MixerNode")
    graph = lower(spec_from_data(data, source="benchmarks/cases.py"))
    return make_mixer(next(n for _, n in graph.nodes(data="node") if isinstance(n, MixerNode) and pick(n)))


def memory_block(dim: int, heads: int, T: int, step: int) -> torch.nn.Module:
    """Our whole deep-memory mixer as ``miras compile`` builds it from the ``titans-pytorch``
    preset (q/k/v projections, data-dependent step, momentum and decay gates, output gate and
    projection around the kernel), with every gradient at the call's start (``chunk: T``) and
    one step per ``step`` tokens: the same module-level work as titans-pytorch's NeuralMemory."""
    return mixer_from_spec({"miras": 1, "name": "titans-pytorch-block",
                            "model": {"vocab_size": 256, "d_model": dim, "n_layers": 1, "heads": heads},
                            "mixers": {"memory": {"preset": "titans-pytorch",
                                                  "update": {"gd_momentum": {"chunk": T, "step": step}}}}})


def ours_memory_block(s: Shape, chunk: int) -> Prepared:
    """:func:`memory_block` at titans-pytorch's size, called as :func:`titans_memory` is (bf16
    autocast, float32 weights): module against module, projections and gates on both sides."""
    block = memory_block(s.H * s.D, s.H, s.T, chunk).to(DEVICE)
    return module_case(block, _rand(s.B, s.T, s.H * s.D, g=_gen(0)).requires_grad_(True))  # x: [B, T, H * D]


def ours_deep_memory(s: Shape, chunk: int, steps: bool = False) -> Prepared:
    """Our deep memory at titans' setting: depth-2 MLP (hidden 4 D, GELU), LayerNorm and
    residual on the output, L2 bias, momentum, per-token decay. ``steps=False``: chunk-wise GD
    (the Titans paper's: gradients at each chunk's start, a step per token); ``steps=True``:
    titans-pytorch's own update (every gradient at the call's start, one step per ``chunk``
    tokens: ``chunk_size=T, step=chunk``, the step-parallel form)."""
    f = load("mirasdsl.kernels.deep_memory", "deep_memory")
    Config = load("mirasdsl.kernels.deep_memory.config", "DeepMemoryConfig")
    cfg = Config(depth=2, hidden=4 * s.D, activation="gelu", residual=True, norm=True,
                 bias="l2", momentum=True, chunk_size=s.T if steps else chunk,
                 step=chunk if steps else 1)
    x = make_inputs(s, "deep_memory")
    gen = _gen(1)
    with torch.no_grad():
        for n in ("q", "k"):
            x[n].copy_(F.normalize(x[n].float(), dim=-1))
        x["eta"] = 0.01 * _uniform(s.B, s.T, s.H, g=gen)  # [B, T, H]
        x["g"] = F.logsigmoid(_rand(s.B, s.T, s.H, dtype=torch.float32, g=gen) + 4)  # [B, T, H]
        x["mu"] = _uniform(s.B, s.T, s.H, g=gen) * 0.9  # [B, T, H]
        w1 = _rand(s.H, s.D, 4 * s.D, dtype=torch.float32, g=gen) * s.D ** -0.5  # [H, D, 4D]
        w2 = _rand(s.H, 4 * s.D, s.D, dtype=torch.float32, g=gen) * (4 * s.D) ** -0.5
    for n in ("eta", "g", "mu"):
        x[n].requires_grad_(True)
    weights = (w1.requires_grad_(True), w2.requires_grad_(True))
    prep = prepared(x, lambda: f(x["q"], x["k"], x["v"], x["eta"], weights, cfg,
                                 g=x["g"], mu=x["mu"]))
    floor = prep.floor_bytes + sum(w.numel() * 4 for w in weights)

    def reference(L: list[Tensor]) -> object:  # L: q, k, v, eta, g, mu, W1, W2
        named = dict(zip(list(x) + ["w1", "w2"], L))
        return f(named["q"], named["k"], named["v"], named["eta"], (named["w1"], named["w2"]), cfg,
                 g=named["g"], mu=named["mu"], backend="chunk")
    # The chunk-wise update at this setting is chaotic over 4096 tokens (float32 and float64 part
    # after ~1.5k: kernels/deep_memory/README.md, "Long sequences"): no reference can be followed
    # there, so only the step form is checked.
    return Prepared(fn=prep.fn, leaves=prep.leaves + list(weights), floor_bytes=floor,
                    reference=reference if steps else None)
