"""Turn the graph the pipeline produced into the callable that AOTAutograd calls."""

from __future__ import annotations

from typing import Any, Callable

import torch.fx as fx

from ..passes.base import PassContext
from ..record import CompileRecord


class GraphRunner:
    """Runs the final FX graph through its generated Python code (one stream, no capture)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        gm.recompile()
        self.gm = gm
        self._forward = gm.forward

    def __call__(self, *args: Any) -> Any:
        """Run the graph on ``args``; returns what the graph returns."""
        return self._forward(*args)


def build_runtime(gm: fx.GraphModule, ctx: PassContext, record: CompileRecord) -> Callable:
    """The callable for ``gm``: for now the graph's own code, run on the caller's stream."""
    return GraphRunner(gm)
