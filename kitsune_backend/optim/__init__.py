"""Training with kitsune: :class:`KitsuneOptimizer`, a torch.optim optimizer whose update is
compiled by kitsune (see :mod:`kitsune_backend.optim.optimizer`)."""

from .optimizer import KitsuneOptimizer

__all__ = ["KitsuneOptimizer"]
