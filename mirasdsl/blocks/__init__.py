"""Runnable modules built from graph nodes: one block class per kernel family, and the graph executor."""
from mirasdsl.blocks.model import GraphModel, build_model

__all__ = ["GraphModel", "build_model"]
