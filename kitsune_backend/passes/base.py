"""What every pass takes and returns.

A pass is a plain function ``pass_fn(gm, ctx) -> PassResult``: it may rewrite ``gm`` in
place (and must leave it valid: see :mod:`kitsune_backend.invariants`), it reads the
settings and what earlier passes found from ``ctx``, and it reports what it did in the
result. Plugin passes have the same signature and may return ``None`` for "no notes".
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import torch
import torch.fx as fx

from ..config import Config


@dataclasses.dataclass(frozen=True)
class Decline:
    """One "no" with its reason: a node not fused, not put on a side stream, not captured."""

    stage: str
    reason: str
    node: str = ""

    def __str__(self) -> str:
        where = f" [{self.node}]" if self.node else ""
        return f"{self.stage}{where}: {self.reason}"


@dataclasses.dataclass
class PassResult:
    """What one pass reports: whether it changed the graph, notes, declines, numbers."""

    changed: bool = False
    notes: list[str] = dataclasses.field(default_factory=list)
    declines: list[Decline] = dataclasses.field(default_factory=list)
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class PassContext:
    """Everything a pass may read besides the graph.

    ``graph_name`` is ``forward``, ``backward`` or ``inference`` plus a counter;
    ``static_input_indices`` lists inputs that are parameters or buffers (they keep their
    address between calls); ``caller_output_indices`` lists outputs the caller receives
    (a forward graph's other outputs are saved for backward); ``state`` holds what passes
    hand to later passes and to the runtime (fusion regions, stream plan, memory plan),
    keyed by the producing pass's name;
    ``kernels`` collects a :class:`~kitsune_backend.record.KernelRecord` per generated kernel.
    """

    config: Config
    graph_name: str
    example_inputs: Sequence[Any]
    static_input_indices: tuple[int, ...] = ()
    caller_output_indices: tuple[int, ...] = ()
    state: dict[str, Any] = dataclasses.field(default_factory=dict)
    kernels: list[Any] = dataclasses.field(default_factory=list)

    @property
    def device(self) -> Optional[torch.device]:
        """The device of the graph's tensor inputs (the first one found), if any."""
        for value in self.example_inputs:
            if isinstance(value, torch.Tensor):
                return value.device
        return None

    @property
    def on_cuda(self) -> bool:
        """True when the graph's tensors live on a CUDA device."""
        device = self.device
        return device is not None and device.type == "cuda"


PassFn = Callable[[fx.GraphModule, PassContext], Optional[PassResult]]
