"""Straight-line Python for a multi-stream schedule.

The stream plan is written into a copy of the graph as calls to tiny functions (switch the
current stream, record an event, wait for one), and FX generates the Python: one line per
node, no interpreter loop, intermediates freed after their last use. The generated forward
reads like this (``print(runner.code)``)::

    kitsune_fork = kitsune_fork()                  # side streams wait for the caller's
    kitsune_to_stream_1 = kitsune_to_stream_1()
    mm_1 = torch.ops.aten.mm.default(x, w2)
    kitsune_record_mm_1 = kitsune_record_mm_1()    # someone on another stream needs it
    kitsune_to_stream_0 = kitsune_to_stream_0()
    mm = torch.ops.aten.mm.default(x, w1)
    kitsune_wait_mm_1 = kitsune_wait_mm_1()
    cat = torch.ops.aten.cat.default([mm, mm_1])
    kitsune_join = kitsune_join()                  # the caller's stream waits for the rest
    kitsune_keep_alive = kitsune_keep_alive(x, mm_1)
    return (cat,)

Memory that crosses streams is protected by keeping a reference until after the join
(``kitsune_keep_alive``): the caching allocator only reuses a block once its last reference
is gone, and by then every stream that read it is ordered before the caller's stream. Blocks
used by one stream alone are freed early and reused in that stream's order, which is safe.
"""

from __future__ import annotations

import random
from typing import Any, Callable

import torch
import torch.fx as fx

from ..graph_utils import copy_graph_module
from ..ir import StreamPlan

DEBUG_SLEEP_CYCLES = 200_000  # up to ~0.1 ms per segment with stream_debug_delays


def _named(fn: Callable, name: str) -> Callable:
    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = "kitsune"
    return fn


class StreamOps:
    """The side streams and events of one compiled graph, and the functions the generated
    code calls to use them. Stream 0 is whatever stream is current when a call starts."""

    def __init__(self, device: torch.device, plan: StreamPlan, debug_delays: bool) -> None:
        self.device = device
        self.plan = plan
        self.side = [torch.cuda.Stream(device) for _ in range(plan.num_streams - 1)]
        self.events = {v: torch.cuda.Event() for v in plan.recorded()}
        self.fork_event = torch.cuda.Event()
        self.caller: Any = None
        self.debug_delays = debug_delays

    def stream(self, index: int) -> Any:
        """Stream ``index`` of the current call (0: the caller's)."""
        return self.caller if index == 0 else self.side[index - 1]

    def fork(self) -> None:
        """Remember the caller's stream; every side stream waits for its work so far."""
        self.caller = torch.cuda.current_stream(self.device)
        self.fork_event.record(self.caller)
        for s in self.side:
            s.wait_event(self.fork_event)

    def switch(self, index: int) -> Callable[[], None]:
        """A function that makes stream ``index`` current (with a random sleep in debug)."""
        side = self.side

        def to_stream() -> None:
            s = self.caller if index == 0 else side[index - 1]
            torch.cuda.set_stream(s)
            if self.debug_delays:
                torch.cuda._sleep(random.randint(0, DEBUG_SLEEP_CYCLES))

        return _named(to_stream, f"to_stream_{index}")

    def record(self, node: Any) -> Callable[[], None]:
        """A function that records ``node``'s event on the current stream."""
        event = self.events[node]
        return _named(lambda: event.record(), f"record_{node}")

    def wait(self, node: Any, index: int) -> Callable[[], None]:
        """A function that makes stream ``index`` wait for ``node``'s event."""
        event = self.events[node]
        if index == 0:
            return _named(lambda: self.caller.wait_event(event), f"wait_{node}")
        stream = self.side[index - 1]
        return _named(lambda: stream.wait_event(event), f"wait_{node}")

    def join(self) -> None:
        """Make the caller's stream current again, waiting for the side streams' tails."""
        torch.cuda.set_stream(self.caller)
        for tail in self.plan.joins:
            self.caller.wait_event(self.events[tail])

    def restore(self) -> None:
        """Put the caller's stream back (after an exception half-way through a call)."""
        if self.caller is not None:
            torch.cuda.set_stream(self.caller)


def keep_alive(*values: Any) -> None:
    """Holds its arguments until it runs: tensors read across streams live to the join."""


def _home_streams(gm: fx.GraphModule, plan: StreamPlan) -> dict[fx.Node, int]:
    """The stream whose allocator pool each value's memory comes from (aliases: their base's)."""
    home: dict[fx.Node, int] = {}
    for node in gm.graph.nodes:
        if node in plan.stream:
            home[node] = plan.stream[node]
        elif node.op == "call_function" and node.args and isinstance(node.args[0], fx.Node):
            home[node] = home.get(node.args[0], 0)
        else:
            home[node] = 0
    return home


def cross_stream_values(gm: fx.GraphModule, plan: StreamPlan) -> list[fx.Node]:
    """Values read by a node on another stream than the one their memory belongs to."""
    home = _home_streams(gm, plan)
    found = []
    for node in gm.graph.nodes:
        if node.op == "output":
            continue
        if any(u in plan.stream and plan.stream[u] != home[node] for u in node.users):
            found.append(node)
    return found


def instrument(gm: fx.GraphModule, plan: StreamPlan, ops: StreamOps) -> fx.GraphModule:
    """A copy of ``gm`` with the stream switches, events, join and keep-alive written in.

    ``plan`` is over ``gm``'s nodes; the copy's nodes are matched by name.
    """
    by_name = {n.name: n for n in gm.graph.nodes}
    keep = {n.name for n in cross_stream_values(gm, plan)}
    out = copy_graph_module(gm)
    graph = out.graph
    nodes = list(graph.nodes)
    first = next(n for n in nodes if n.op != "placeholder")
    with graph.inserting_before(first):
        graph.call_function(_named(lambda: ops.fork(), "fork"))
    switches = {s: ops.switch(s) for s in range(plan.num_streams)}
    current = 0
    for node in nodes:
        original = by_name.get(node.name)
        if original not in plan.stream:
            continue
        s = plan.stream[original]
        with graph.inserting_before(node):
            if s != current:
                graph.call_function(switches[s])
                current = s
            for u in plan.waits[original]:
                graph.call_function(ops.wait(u, s))
        if original in ops.events:
            with graph.inserting_after(node):
                graph.call_function(ops.record(original))
    output = next(n for n in reversed(nodes) if n.op == "output")
    with graph.inserting_before(output):
        graph.call_function(_named(lambda: ops.join(), "join"))
        held = tuple(n for n in nodes if n.name in keep)
        graph.call_function(_named(keep_alive, "keep_alive"), held)
    out.recompile()
    return out
