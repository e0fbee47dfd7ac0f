"""The compared backends: eager, Inductor (two modes), Dynamo's cudagraphs, and kitsune with
everything on and with one feature off at a time (the ablations show where speed comes from).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

import kitsune_backend


def kitsune_registered() -> bool:
    """Whether Dynamo finds ``backend="kitsune"`` by name (the package's entry point).

    Without an install, the harness passes :func:`kitsune_backend.kitsune` itself, which
    Dynamo treats the same way (``mode`` and ``options`` included).
    """
    return "kitsune" in torch._dynamo.list_backends(exclude_tags=())


@dataclasses.dataclass(frozen=True)
class Backend:
    """How to turn a module into the callable that gets timed."""

    name: str
    description: str
    compile_kwargs: Optional[dict[str, Any]] = None
    """Keyword arguments for ``torch.compile``; ``None`` means run eagerly."""
    cuda_only: bool = False
    """Skipped on the CPU (CUDA graphs need CUDA)."""
    ablation: str = ""
    """For kitsune variants: the feature switched off."""
    marks_steps: bool = False
    """Call ``torch.compiler.cudagraph_mark_step_begin()`` before every call, as the
    documentation of Inductor's ``mode="reduce-overhead"`` asks: each call is a new step,
    and the last step's outputs may be overwritten."""
    update: str = "eager"
    """How a training row's Adam update runs (:class:`~benchmarks.measure.TrainStep`):
    ``"eager"``, ``"compiled"``, ``"kitsune"``, ``"step"`` or ``"captured"``."""
    train_only: bool = False
    """A training arrangement: skipped on inference workloads."""

    def wrap(self, module: nn.Module) -> Callable:
        """The module itself (eager) or ``torch.compile(module, **compile_kwargs)`` (behind
        a step mark when :attr:`marks_steps`)."""
        if self.compile_kwargs is None:
            return module
        kwargs = dict(self.compile_kwargs)
        if kwargs["backend"] == "kitsune" and not kitsune_registered():
            kwargs["backend"] = kitsune_backend.kitsune
        compiled = torch.compile(module, **kwargs)
        return MarkedSteps(compiled) if self.marks_steps else compiled

    @property
    def is_kitsune(self) -> bool:
        """Whether this row measures kitsune (what the regression check watches)."""
        return self.name.startswith("kitsune")


class MarkedSteps:
    """``compiled`` called after ``torch.compiler.cudagraph_mark_step_begin()``."""

    def __init__(self, compiled: Callable) -> None:
        self.compiled = compiled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Mark a new step, then call the compiled module."""
        torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(*args, **kwargs)


def _kitsune_without(feature: str) -> Backend:
    return Backend(
        f"kitsune-no-{feature.replace('_', '-')}",
        f"kitsune with {feature}=False",
        {"backend": "kitsune", "options": {feature: False}},
        ablation=feature,
    )


BACKENDS: tuple[Backend, ...] = (
    Backend("eager", "plain PyTorch, no compile"),
    Backend("inductor", "torch.compile default (Inductor)", {"backend": "inductor"}),
    Backend("inductor-ro", 'Inductor, mode="reduce-overhead" (CUDA graphs), '
            "cudagraph_mark_step_begin() before each call",
            {"backend": "inductor", "mode": "reduce-overhead"}, cuda_only=True,
            marks_steps=True),
    Backend("cudagraphs", 'Dynamo\'s "cudagraphs" backend (ATen graph in a CUDA graph)',
            {"backend": "cudagraphs"}, cuda_only=True),
    Backend("inductor-ro-opt", 'Inductor reduce-overhead, plus torch.compile(optimizer.step): '
            "Inductor's best training arrangement", {"backend": "inductor",
                                                     "mode": "reduce-overhead"},
            cuda_only=True, marks_steps=True, update="compiled", train_only=True),
    Backend("kitsune", "kitsune, all features on", {"backend": "kitsune"}),
    Backend("kitsune-optim", "kitsune, plus KitsuneOptimizer (the update as kitsune kernels)",
            {"backend": "kitsune"}, update="kitsune", train_only=True),
    Backend("kitsune-step", "kitsune, KitsuneOptimizer, the whole step under "
            "kitsune_backend.compile_step (one CUDA graph per step)",
            {"backend": "kitsune"}, cuda_only=True, update="step", train_only=True),
    Backend("eager-step", "eager model, Adam(capturable=True), the whole step under "
            "compile_step: the eager step captured in one CUDA graph, unfused",
            None, cuda_only=True, update="captured", train_only=True),
    _kitsune_without("fusion"),
    _kitsune_without("streams"),
    _kitsune_without("cuda_graphs"),
    _kitsune_without("memory_pool"),
)

BY_NAME = {b.name: b for b in BACKENDS}
MICRO_BACKENDS = ("eager", "inductor", "kitsune")
"""The backends the memory-bound micro-benchmarks compare."""
