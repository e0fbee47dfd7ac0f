"""fusion: group pointwise and reduction nodes into regions that become generated kernels.

Placeholder until the fusion issue lands: it changes nothing and says so.
"""

from __future__ import annotations

import torch.fx as fx

from .base import Decline, PassContext, PassResult


def fuse(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Leave ``gm`` as it is and record that no fusion rules exist yet."""
    if not ctx.config.fusion:
        return PassResult(declines=[Decline("fusion", "fusion is off (config fusion=False)")])
    return PassResult(declines=[Decline("fusion", "no fusion rules implemented yet")])
