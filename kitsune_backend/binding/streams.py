"""streams_code: the runner of the graph, on the streams the stream plan chose.

With more than one stream planned (on CUDA), the graph's code is rewritten into straight-line
code that switches streams and records and waits for events
(:mod:`kitsune_backend.runtime.schedule_code`); otherwise the graph's own code runs on the
caller's stream. Either way ``ctx.runner`` becomes a
:class:`~kitsune_backend.runtime.executor.ScheduleRunner`.
"""

from __future__ import annotations

import torch.fx as fx

from ..ir import PassContext, PassResult
from ..runtime.executor import ScheduleRunner
from ..runtime.schedule_code import StreamOps


def instrument_streams(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Set ``ctx.runner`` to the schedule's runner: over several streams, or the graph's code.

    Before: the graph with ``kitsune_stream`` / ``kitsune_wait`` on its nodes. After (two
    streams)::

        set_stream(1); c = mm(x, w2); d = gelu(c); record(d)
        set_stream(0); a = mm(x, w1); b = gelu(a); wait(d); e = cat([b, d])
    """
    plan = ctx.stream_plan
    ops = None
    if plan.num_streams > 1 and ctx.on_cuda:
        ops = StreamOps(ctx.device, plan, ctx.config.stream_debug_delays)
    runner = ScheduleRunner(gm, plan, ops)
    ctx.runner = runner
    several = runner.ops is not None
    stats = {
        "executor": "streams" if several else "graph",
        "streams_used": plan.num_streams if several else 1,
        "events": plan.events if several else 0,
    }
    note = (f"straight-line code over {plan.num_streams} streams, {plan.events} event(s)"
            if several else "the graph's own code on the caller's stream")
    return PassResult(notes=[note], stats=stats)
