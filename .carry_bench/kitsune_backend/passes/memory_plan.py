"""memory_plan: an offset in one pooled arena for every intermediate.

Placeholder until the stream issue lands: it measures the intermediates and plans nothing.
"""

from __future__ import annotations

import torch.fx as fx

from ..graph_utils import launches_kernel, tensor_value
from .base import Decline, PassContext, PassResult


def plan_memory(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Sum the bytes of the intermediates and record that no arena is planned yet."""
    total = 0
    for node in gm.graph.nodes:
        value = tensor_value(node)
        if launches_kernel(node) and value is not None:
            total += value.untyped_storage().nbytes() if not value.is_sparse else 0
    return PassResult(
        declines=[Decline("memory_plan", "arena planning not implemented yet")],
        stats={"bytes_intermediates": total, "bytes_planned": 0},
    )
