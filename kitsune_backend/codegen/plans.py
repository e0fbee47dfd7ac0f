"""``KernelPlan``: a kernel the graph passes decided on, standing in the graph until lowering.

The fusion and matmul_bias stages replace each group of nodes that is to become one
generated kernel by one ``call_function`` node whose target is a :class:`KernelPlan`. The
plan holds what lowering needs (how to generate the source) and what the graph needs to
stay runnable before then: called, it runs its nodes' ATen ops. The ``kernels`` stage
(:mod:`kitsune_backend.codegen.lowering`) generates each plan's source and puts a
:class:`~kitsune_backend.codegen.kernel.FusedKernel` in its place, on the same node.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.fx as fx

from .heuristics import LaunchConfig
from .specs import KernelSource, stored_in_place


class KernelPlan:
    """One future kernel: its name, its ATen ops, and how to generate its source.

    ``generate(None)`` gives the source with the launch the heuristics pick;
    ``generate(config)`` one with the given launch (what autotuning tries), when ``tunable``.
    ``nodes`` names the FX nodes the kernel computes (sources it computes included);
    ``device`` is where a kernel without tensor inputs writes its outputs; ``stores_into``
    (output, input) pairs: outputs written into an input in place, not returned.
    """

    def __init__(self, name: str, aten_graph: fx.Graph,
                 generate: Callable[[Optional[LaunchConfig]], KernelSource],
                 nodes: list[str], device: torch.device, tunable: bool,
                 stores_into: tuple[tuple[int, int], ...] = ()) -> None:
        self.__name__ = name
        self.__qualname__ = name
        self.__module__ = "kitsune_backend.kernels"
        self.aten_graph = aten_graph
        self.generate = generate
        self.nodes = nodes
        self.device = device
        self.tunable = tunable
        self.stores_into = stores_into
        self._aten_module: Optional[fx.GraphModule] = None

    def __repr__(self) -> str:
        return f"<KernelPlan {self.__name__}: {', '.join(self.nodes)}>"

    def __call__(self, *args: Any) -> Any:
        """The ATen ops of the future kernel on ``args`` (one output, or a tuple)."""
        if self._aten_module is None:
            self._aten_module = fx.GraphModule(torch.nn.Module(), self.aten_graph)
        results = stored_in_place(self._aten_module(*args), args, self.stores_into)
        return results[0] if len(results) == 1 else results
