"""Which block class computes which kernel family: a registry keyed by the lowering's family."""
from __future__ import annotations

from typing import Callable

from torch import nn

from mirasdsl.graph.nodes import MixerNode
from mirasdsl.spec.families import ATTENTION, DEEP, DELTA, GLA

BlockFactory = Callable[[MixerNode, int], nn.Module]
REGISTRY: dict[str, BlockFactory] = {}


def register(family: str) -> Callable[[BlockFactory], BlockFactory]:
    def add(factory: BlockFactory) -> BlockFactory:
        REGISTRY[family] = factory
        return factory
    return add


def make_mixer(node: MixerNode, seed: int = 0) -> nn.Module:
    """The block for a tuple-mixer node (its family chose the class)."""
    if not REGISTRY:
        _load()
    return REGISTRY[node.family](node, seed)


def _load() -> None:
    from mirasdsl.blocks.attention import AttentionMixer
    from mirasdsl.blocks.deep import DeepMemoryMixer
    from mirasdsl.blocks.linear import LinearMixer

    register(GLA)(LinearMixer)
    register(DELTA)(LinearMixer)
    register(DEEP)(DeepMemoryMixer)
    register(ATTENTION)(AttentionMixer)
