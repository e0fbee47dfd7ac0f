"""fusion: group pointwise and reduction nodes into regions, each to become one kernel.

Regions are found by :func:`kitsune_backend.passes.grouping.find_regions` (the rules and the
reason for every boundary live there and in :mod:`kitsune_backend.codegen.region`). Each
region of two or more ops is replaced by one ``call_function`` node whose target is a
:class:`~kitsune_backend.codegen.plans.KernelPlan` (its source is generated later, by the
``kernels`` stage); regions of one op stay ATen (bias adds after a matmul are listed in
``ctx.lone_ops`` for the matmul_bias stage).

With symbolic sizes (Dynamo's dynamic shapes) the same regions are formed; each kernel
plan node then also takes the graph's size inputs its kernel needs (``s0``), after its
tensors, and the kernel receives their values at each call
(:mod:`kitsune_backend.codegen.symbolic`). What cannot be generated for symbolic sizes
stays ATen with a reason that begins with :data:`DYNAMIC_SHAPES`.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from ..codegen import index_sources, ops
from ..codegen.heuristics import LaunchConfig, pointwise_config, reduction_config
from ..codegen.kernel import why_not_on
from ..codegen.plans import KernelPlan
from ..codegen.region import Region
from ..codegen.specs import TensorSpec, symbols_in
from ..codegen.source import generate
from ..codegen.symbolic import DYNAMIC_SHAPES, Size, hint, is_size_node, is_symbolic
from ..ir import META_REGION, META_STORES_INTO, Decline, PassContext, PassResult
from .grouping import find_regions, schedule
from .in_place import stores_into
from .matmul_bias import matmul_and_bias

STAGE = "fusion"
_SHORT = {"convert_element_type": "to", "_to_copy": "to", "threshold_backward": "relu_bwd"}
SYMBOLIC_PLANNING_SIZE = 1024
"""The least size a symbolic size counts as when a kernel's launch is chosen."""


def fuse(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Replace each fusable region of ``gm`` by one kernel-plan node.

    A region holds pointwise ops (with broadcasting, ``cat`` and gathers whose indices are
    proven in range), the reductions they feed and the pointwise ops after those; constant
    and ``arange`` sources are computed inside the kernels that read them, so they launch
    nothing. Every boundary is a decline with its reason (:mod:`kitsune_backend.codegen.ops`
    lists the ops). Regions of one op stay ATen; ``ctx.lone_ops`` names those that are a bias
    add after a matmul, for the matmul_bias stage. Sizes may be symbolic (see the module
    docstring).

    Before::

        amax = aten.amax(x, [-1], True); sub = aten.sub(x, amax); exp = aten.exp(sub)
        sum_1 = aten.sum(exp, [-1], True); div = aten.div(exp, sum_1); return div

    After::

        kitsune_fused_amax_sub_exp_sum_div_0 = kitsune_fused_amax_sub_exp_sum_div_0(x)
        return kitsune_fused_amax_sub_exp_sum_div_0
    """
    ctx.regions, ctx.lone_ops = {}, []
    why = _why_not_fuse(gm, ctx)
    if why:
        return PassResult(declines=[Decline(STAGE, why)])
    device = ctx.kernel_device
    grouping = find_regions(gm, device)
    result = PassResult(declines=list(grouping.declines))
    kept, alone = [], []
    for region in grouping.regions:
        compute = [n for n in region.nodes if not ops.is_identity_view(n)]
        if len(compute) + len(_inlined(region)) >= 2:
            kept.append(region)
        else:
            alone.append((compute or region.nodes)[0].name)
    cannot_launch = why_not_on(device)
    if cannot_launch:
        result.declines.append(Decline(
            STAGE, f"{cannot_launch}: the {len(kept)} region(s) found run as their ATen ops"))
        kept = []
    kept = _with_size_arguments(gm, grouping, kept, result)
    by_name = {n.name: n for n in gm.graph.nodes}
    ctx.lone_ops = [] if cannot_launch else [
        name for name in alone if not ops.has_symbolic_size(by_name[name])
        and matmul_and_bias(by_name[name]) is not None]
    result.declines.extend(
        Decline(STAGE, "kept as ATen: a region of one op saves no memory pass", name)
        for name in alone if name not in ctx.lone_ops)
    result.stats.update(fused_regions=len(kept), nodes_fused=sum(len(r.nodes) for r in kept))
    if kept:
        stored = _rewrite(gm, ctx, grouping, kept)
        result.changed = True
        result.notes.append(f"{len(kept)} region(s), {result.stats['nodes_fused']} node(s) fused")
        if stored:  # those copy_ nodes are gone: their kernels store in place
            result.declines = [d for d in result.declines if d.node not in stored]
            result.notes.append(f"{len(stored)} copy_ into an input stored in place by its kernel")
        result.stats["stored_in_place"] = len(stored)
    return result


def _why_not_fuse(gm: fx.GraphModule, ctx: PassContext) -> str:
    if not ctx.config.fusion:
        return "fusion is off (config fusion=False): the graph runs as ATen ops"
    device = ctx.kernel_device
    if device is None:
        return "no tensor inputs"
    if device.type not in ("cuda", "cpu"):
        return f"no Triton kernels on {device.type}: the graph runs as ATen ops"
    return ""



def kernel_name(region: Region, number: int) -> str:
    """``kitsune_fused_<first ops>_<number>``: what the kernel computes, readable in traces."""
    parts: list[str] = []
    for node in region.nodes:
        if ops.is_identity_view(node):
            continue
        name = ops.packet(node).__name__.split(".")[-1]
        name = _SHORT.get(name, name.strip("_"))
        if name not in parts:
            parts.append(name)
    return f"kitsune_fused_{'_'.join(parts[:5])}_{number}"


def _config(region: Region) -> LaunchConfig:
    """The heuristic launch of ``region``; a symbolic size counts as at least
    :data:`SYMBOLIC_PLANNING_SIZE` (the kernel serves every size, larger ones included)."""
    if region.kind == "pointwise":
        return pointwise_config(_planning(region.numel))
    return reduction_config(_planning(region.rows), _planning(region.columns))


def _planning(value: int | Size) -> int:
    return max(hint(value), SYMBOLIC_PLANNING_SIZE) if is_symbolic(value) else value


def _inlined(region: Region) -> list[fx.Node]:
    """The constant and index sources ``region`` computes instead of reading."""
    return [n for n in region.external if index_sources.inlinable(n)]


def _computed_in_kernels(nodes: list[fx.Node], fused: set[fx.Node]) -> set[fx.Node]:
    """Sources (and reshapes of them) read only by fused kernels, which compute them."""
    dropped: set[fx.Node] = set()
    for node in reversed(nodes):
        if index_sources.inlinable(node) and node.users and all(
            u in fused or u in dropped for u in node.users
        ):
            dropped.add(node)
    return dropped


def _arguments(grouping, region: Region, symbol_nodes: dict[str, fx.Node]
               ) -> tuple[list[fx.Node], list[fx.Node], list[fx.Node], tuple[str, ...]]:
    """(kernel arguments, tensor inputs, outputs, size symbols) of ``region``. The arguments
    are the tensor inputs, then one graph value per size symbol, then the other sizes the
    region's views read (those only its ATen fallback uses)."""
    inlined = _inlined(region)
    external = sorted(region.external - set(inlined), key=grouping.index.__getitem__)
    sizes = [n for n in external if is_size_node(n)]
    inputs = [n for n in external if n not in sizes]
    outputs = [n for n in region.nodes if any(u not in region.context for u in n.users)]
    symbols = symbols_in([TensorSpec.of(n) for n in (*inputs, *outputs)],
                         region.sizes())
    named = [symbol_nodes[s] for s in symbols if s in symbol_nodes]
    arguments = [*inputs, *named, *(n for n in sizes if n not in named)]
    return arguments, inputs, outputs, symbols


def _symbol_nodes(gm: fx.GraphModule) -> dict[str, fx.Node]:
    """The graph inputs that are size symbols (``s0``), by the symbol's name."""
    found: dict[str, fx.Node] = {}
    for node in gm.graph.find_nodes(op="placeholder"):
        value = node.meta.get("val")
        if isinstance(value, torch.SymInt) and value.node.expr.is_Symbol:
            found.setdefault(str(value.node.expr), node)
    return found


def _with_size_arguments(gm: fx.GraphModule, grouping, kept: list[Region],
                         result: PassResult) -> list[Region]:
    """The regions of ``kept`` whose size symbols are all graph inputs (a kernel takes
    their values as arguments); the others run as ATen ops, each with a decline."""
    symbol_nodes = _symbol_nodes(gm)
    found = []
    for region in kept:
        symbols = _arguments(grouping, region, symbol_nodes)[3]
        missing = [s for s in symbols if s not in symbol_nodes]
        if missing:
            result.declines.append(Decline(STAGE, (
                f"{DYNAMIC_SHAPES}: sizes {', '.join(missing)} are no graph input, a kernel "
                "could not be given them: the region runs as its ATen ops"),
                region.nodes[0].name))
        else:
            found.append(region)
    return found


def _aten_region(region: Region, inputs: list[fx.Node], outputs: list[fx.Node]) -> fx.Graph:
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in inputs:
        env[node] = graph.placeholder(node.name)
        env[node].meta = dict(node.meta)
    for node in _inlined(region):
        env[node] = index_sources.aten_equivalent(graph, node)
    for node in region.nodes:
        env[node] = graph.node_copy(node, lambda a: env[a])
    graph.output(tuple(env[n] for n in outputs))
    return graph


def _bind_outputs(graph: fx.Graph, call: fx.Node, outputs: list[fx.Node],
                  env: dict[fx.Node, fx.Node]) -> None:
    """The kernel call's value (one output, a tuple of them, or ``()`` when every output is
    stored in place), and a ``getitem`` per output when there are several."""
    if len(outputs) == 1:
        call.meta["val"] = outputs[0].meta["val"]
        env[outputs[0]] = call
        return
    call.meta["val"] = tuple(o.meta["val"] for o in outputs)
    for i, out in enumerate(outputs):
        item = graph.create_node("call_function", operator.getitem, (call, i), name=out.name)
        item.meta["val"] = out.meta["val"]
        env[out] = item


def _rewrite(gm: fx.GraphModule, ctx: PassContext, grouping, kept: list[Region]) -> set[str]:
    """Put one kernel-plan call in place of each kept region, in a topological order of
    regions and loose nodes (:func:`~kitsune_backend.passes.grouping.schedule`); returns
    the names of the ``copy_`` nodes that kernels made unneeded by storing in place."""
    nodes = list(gm.graph.nodes)
    order = schedule(grouping, kept, nodes)
    graph = fx.Graph()
    graph._codegen = gm.graph._codegen
    env: dict[fx.Node, fx.Node] = {}
    numbers = {id(u): i for i, u in enumerate(u for u in order if isinstance(u, Region))}
    dropped = _computed_in_kernels(nodes, {n for region in kept for n in region.nodes})
    stored: set[str] = set()
    symbol_nodes = _symbol_nodes(gm)
    for unit in order:
        if not isinstance(unit, Region):
            if unit not in dropped:
                env[unit] = graph.node_copy(unit, lambda a: env[a])
            continue
        arguments, inputs, outputs, symbols = _arguments(grouping, unit, symbol_nodes)
        name = kernel_name(unit, numbers[id(unit)])
        names = [n.name for n in sorted([*_inlined(unit), *unit.nodes],
                                        key=grouping.index.__getitem__)]
        into, copies = stores_into(unit, inputs, outputs)
        dropped.update(copies)
        stored.update(c.name for c in copies)
        plan = KernelPlan(
            name, _aten_region(unit, arguments, outputs),
            lambda config, r=unit, i=inputs, o=outputs, n=name, s=into: generate(
                r, n, i, o, config or _config(r), s),
            names, outputs[0].meta["val"].device, tunable=not symbols,
            stores_into=tuple(sorted(into.items())))
        call = graph.create_node("call_function", plan, tuple(env[a] for a in arguments),
                                 name=name)
        call.meta[META_REGION] = name
        if into:
            call.meta[META_STORES_INTO] = [inputs[k].name for _, k in sorted(into.items())]
        _bind_outputs(graph, call, [o for i, o in enumerate(outputs) if i not in into], env)
        ctx.regions[name] = names
    gm.graph = graph
    return stored
