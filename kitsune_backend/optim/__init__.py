"""Training with kitsune: :class:`KitsuneOptimizer`, a torch.optim optimizer whose update is
compiled by kitsune (see :mod:`kitsune_backend.optim.optimizer`), and :func:`compile_step`,
a whole training step replayed as one CUDA graph (see :mod:`kitsune_backend.optim.step`)."""

from .optimizer import KitsuneOptimizer
from .step import CompiledStep, compile_step

__all__ = ["CompiledStep", "KitsuneOptimizer", "compile_step"]
