"""What runs a compiled graph: streams, the memory arena, CUDA graph capture and replay."""

from .build import build_runtime

__all__ = ["build_runtime"]
