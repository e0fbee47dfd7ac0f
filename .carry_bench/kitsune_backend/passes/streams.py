"""streams: give each kernel a CUDA stream; cross-stream edges get events.

Placeholder until the stream issue lands: everything stays on the caller's stream.
"""

from __future__ import annotations

import torch.fx as fx

from ..graph_utils import launches_kernel
from .base import Decline, PassContext, PassResult


def assign_streams(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Put every kernel node on stream 0 (the caller's) and record why."""
    for node in gm.graph.nodes:
        if launches_kernel(node):
            node.meta["kitsune_stream"] = 0
    return PassResult(
        declines=[Decline("streams", "multi-stream scheduling not implemented yet")],
        stats={"streams_used": 1},
    )
