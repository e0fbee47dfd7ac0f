"""The core types of kitsune: what every layer imports, and what stages hand each other.

Nothing here imports another kitsune module but :mod:`~kitsune_backend.config` and
:mod:`~kitsune_backend.errors`; every other module may import this one.

* :class:`Decline` (one "no" with its reason) and :class:`PassResult` (what a stage
  reports) are what every stage returns.
* :class:`PassContext` is what a stage reads besides the graph, and the typed fields in which
  stages hand their results to later ones (``regions``, ``stream_plan``, ``memory_plan``,
  ``batch_split``, ``kernels``, ``runner``). :data:`META_KEYS` lists the few facts kept on
  the nodes themselves (``node.meta``), because they belong to one node: its region,
  stream, waits and arena offset.
* :class:`StreamPlan`, :class:`Buffer` / :class:`MemoryPlan` and :class:`BatchSplit` are
  plain data, produced by the graph passes and read by the runtime.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Hashable, Optional, Sequence

import torch
import torch.fx as fx

from .config import Config
from .log import Progress

META_REGION = "kitsune_region"
"""fusion: the name of the fused region a node computes (its target: the kernel it launches)."""
META_STREAM = "kitsune_stream"
"""streams: the node's stream index, 0 = the caller's stream."""
META_WAIT = "kitsune_wait"
"""streams: the producers (node names) whose events the node waits for before it runs."""
META_OFFSET = "kitsune_offset"
"""memory_plan: the byte offset of the node's output in the arena."""
META_STORES_INTO = "kitsune_stores_into"
"""fusion: the graph inputs (node names) a kernel node stores into, in place."""
META_KEYS = (META_REGION, META_STREAM, META_WAIT, META_OFFSET, META_STORES_INTO)


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
    """What one stage reports: whether it changed the graph, notes, declines, numbers."""

    changed: bool = False
    notes: list[str] = dataclasses.field(default_factory=list)
    declines: list[Decline] = dataclasses.field(default_factory=list)
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class KernelRecord:
    """A generated kernel: its name, the FX nodes it came from, and its source; ``kernel``
    is the callable itself, whose ``compile_error`` says why it runs as ATen ops, if its
    source did not load or it failed to compile at its first launch."""

    name: str
    nodes: list[str]
    source: str
    kernel: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def compile_error(self) -> str:
        """Why the kernel did not load or compile ("" when it did, or has not launched yet)."""
        return getattr(self.kernel, "compile_error", "")


@dataclasses.dataclass
class StreamPlan:
    """The schedule of one DAG: a stream per node, the waits, the joins and vector clocks.

    ``waits[v]`` lists the producers whose events ``v`` waits for (on ``v``'s stream, before
    it runs); ``joins`` lists the last node of each side stream that the caller's stream
    waits for at the end; ``clock[v][t]`` is the last position of stream ``t`` known to have
    finished before ``v`` finishes (``v`` itself included).
    """

    order: list[Hashable]
    stream: dict[Hashable, int]
    position: dict[Hashable, int]
    waits: dict[Hashable, list[Hashable]]
    joins: list[Hashable]
    clock: dict[Hashable, tuple[int, ...]]
    chains: list[list[Hashable]]
    num_streams: int

    @property
    def events(self) -> int:
        """How many waits between nodes (the fork and the final joins not counted)."""
        return sum(len(w) for w in self.waits.values())

    @property
    def streams_used(self) -> int:
        """How many distinct streams carry work."""
        return len(set(self.stream.values())) or 1

    def happens_before(self, a: Hashable, b: Hashable) -> bool:
        """True when ``a`` is certain to finish before ``b`` starts (``a != b``)."""
        if a == b:
            return False
        return self.clock[b][self.stream[a]] >= self.position[a]

    def recorded(self) -> set[Hashable]:
        """The nodes that record an event (someone waits for them, or the caller joins them)."""
        found = {u for w in self.waits.values() for u in w}
        return found | set(self.joins)


@dataclasses.dataclass(frozen=True)
class Buffer:
    """One intermediate: its size in bytes, the node that writes it, the nodes that read it."""

    name: Hashable
    size: int
    producer: Hashable
    users: tuple[Hashable, ...]


@dataclasses.dataclass
class MemoryPlan:
    """The arena of one graph: a :class:`Buffer` and an offset per intermediate storage, and
    the arena's size (0, with no buffers, when the memory pool is off or declined)."""

    buffers: list[Buffer]
    offsets: dict[Any, int]
    arena_bytes: int


@dataclasses.dataclass(frozen=True)
class BatchSplit:
    """Whether a graph of symbolic sizes may be padded along its batch, and how (the
    batch_split stage's answer, read by the capture stage).

    ``symbol`` is the batch size's symbol (``s0``) and ``reason`` why the graph may not be
    padded ("" when it may). ``size_inputs`` are the positions of the int inputs whose value
    is the batch size; ``inputs`` and ``outputs`` the (position, dim) of the tensor inputs
    and outputs that carry the batch in that dim, batch-major (a dim of size ``k * s0``
    holds ``k`` consecutive entries per row of the batch); ``most`` is the largest batch
    size the graph's guards allow (0: no bound)."""

    symbol: str = ""
    reason: str = ""
    size_inputs: tuple[int, ...] = ()
    inputs: tuple[tuple[int, int], ...] = ()
    outputs: tuple[tuple[int, int], ...] = ()
    most: int = 0

    @property
    def separable(self) -> bool:
        """True when padding the batch leaves every row's result as it was."""
        return not self.reason


@dataclasses.dataclass
class RuntimeReport:
    """Where a compiled graph's runtime reports while it runs: counters (``runtime_info``:
    captured instances, uncaptured calls, ...) and declines that only a call can find (a
    capture that failed). The compile record shares these two objects."""

    runtime_info: dict[str, Any] = dataclasses.field(default_factory=dict)
    other_declines: list[Decline] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class PassContext:
    """Everything a stage may read besides the graph, and what stages hand on.

    Given by the compiler: ``config``; ``graph_name`` (``forward``, ``backward`` or
    ``inference`` plus a counter); ``example_inputs``; ``static_input_indices`` (inputs that
    are parameters or buffers: they keep their address between calls);
    ``caller_output_indices`` (outputs the caller receives: a forward graph's others are saved
    for backward); ``runtime_report`` (where the built runtime reports while it runs);
    ``process`` (the process's :class:`~kitsune_backend.process.ProcessState`: plugin
    registry, kernel cache, compile pool, capture registry); ``progress`` (where a slow
    compile says how far it got, :class:`~kitsune_backend.log.Progress`); ``arena_group``
    (the :class:`~kitsune_backend.runtime.arena.ArenaGroup` whose buffer the graphs of this
    compile share).

    Set by stages (``None`` until the stage that sets it has run; the pipeline lists which
    stage requires and which ensures each one, and checks it in debug mode):
    ``regions`` (fusion: region name -> the node names it fused), ``lone_ops`` (fusion: ops
    left alone, which matmul_bias may take), ``stream_plan`` (streams; memory_plan replaces
    it when it moves branches back to fit the memory budget), ``memory_plan``
    (memory_plan), ``batch_split`` (batch_split: a :class:`BatchSplit`), ``kernels``
    (kernels: a :class:`KernelRecord` per generated kernel), ``arena`` (arena: the graph's
    :class:`~kitsune_backend.runtime.arena.Arena`, when anything writes into it),
    ``runner`` (the runtime stages: the callable being built, finally the compiled graph).
    """

    config: Config
    graph_name: str
    example_inputs: Sequence[Any]
    static_input_indices: tuple[int, ...] = ()
    caller_output_indices: tuple[int, ...] = ()
    runtime_report: RuntimeReport = dataclasses.field(default_factory=RuntimeReport)
    process: Any = None
    progress: Optional[Progress] = None
    arena_group: Any = None
    regions: Optional[dict[str, list[str]]] = None
    lone_ops: Optional[list[str]] = None
    stream_plan: Optional[StreamPlan] = None
    memory_plan: Optional[MemoryPlan] = None
    batch_split: Optional[BatchSplit] = None
    kernels: Optional[list[KernelRecord]] = None
    arena: Any = None
    runner: Optional[Callable] = None

    @property
    def device(self) -> Optional[torch.device]:
        """The device of the graph's tensor inputs (the first one found), if any."""
        for value in self.example_inputs:
            if isinstance(value, torch.Tensor):
                return value.device
        return None

    @property
    def kernel_device(self) -> Optional[torch.device]:
        """The device generated kernels run on: the first CUDA input's (CPU scalars may
        sit beside CUDA tensors), else :attr:`device`."""
        for value in self.example_inputs:
            if isinstance(value, torch.Tensor) and value.device.type == "cuda":
                return value.device
        return self.device

    @property
    def on_cuda(self) -> bool:
        """True when the graph's tensors live on a CUDA device."""
        device = self.device
        return device is not None and device.type == "cuda"


PassFn = Callable[[fx.GraphModule, PassContext], Optional[PassResult]]
