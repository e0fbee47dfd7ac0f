"""Run a compiled graph's schedule, uncaptured: each node on its stream, events as planned."""

from __future__ import annotations

from typing import Any, Optional

import torch.fx as fx

from ..ir import StreamPlan
from .schedule_code import StreamOps, instrument


class ScheduleRunner:
    """Runs the final graph through generated straight-line code.

    With a plan over several streams (CUDA only) the code switches streams and records and
    waits for events (see :mod:`kitsune_backend.runtime.schedule_code`); otherwise it is the
    graph's own code, on the caller's stream.
    """

    def __init__(
        self,
        gm: fx.GraphModule,
        plan: Optional[StreamPlan] = None,
        ops: Optional[StreamOps] = None,
    ) -> None:
        if plan is not None and ops is not None and plan.num_streams > 1:
            self.gm = instrument(gm, plan, ops)
        else:
            gm.recompile()
            self.gm = gm
            ops = None
        self.ops = ops
        self._forward = self.gm.forward

    @property
    def code(self) -> str:
        """The generated Python that one call runs."""
        return self.gm.code

    def __call__(self, *args: Any) -> Any:
        """Run the schedule on ``args``; the caller's stream is current again on return."""
        if self.ops is None:
            return self._forward(*args)
        try:
            return self._forward(*args)
        except BaseException:
            self.ops.restore()
            raise
