"""fusion: group pointwise and reduction nodes into regions that become generated kernels.

Regions are found by :func:`kitsune_backend.codegen.grouping.find_regions` (the rules and
the reason for every boundary live there and in :mod:`kitsune_backend.codegen.region`);
each region of two or more ops is generated as Triton source
(:mod:`kitsune_backend.codegen.source`), loaded through the kernel cache, and replaced by
one ``call_function`` node whose target is a :class:`~kitsune_backend.codegen.kernel.FusedKernel`.
A matmul whose bias add fused with nothing becomes one generated kernel with that add
where that is not slower (:mod:`kitsune_backend.passes.matmul_bias`). The new kernels are
then compiled on worker processes in parallel (:mod:`kitsune_backend.codegen.precompile`)
instead of one by one at their first launch.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from ..codegen import constants, ops
from ..codegen.grouping import find_regions, schedule
from ..codegen.heuristics import LaunchConfig, pointwise_config, reduction_config
from ..codegen.kernel import FusedKernel, why_not_on
from ..codegen.precompile import precompile
from ..codegen.region import Region
from ..codegen.source import KernelSource, generate
from ..graph_utils import has_symbolic_shapes
from ..record import KernelRecord
from .base import Decline, PassContext, PassResult
from .matmul_bias import fold_lone_bias_adds

STAGE = "fusion"
_SHORT = {"convert_element_type": "to", "_to_copy": "to", "threshold_backward": "relu_bwd"}


def fuse(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Replace each fusable region of ``gm`` by one generated-kernel node.

    A region holds pointwise ops (with broadcasting, ``cat`` and gathers whose indices are
    proven in range), the reductions they feed and the pointwise ops after those; constant
    and ``arange`` sources are computed inside the kernels that read them, so they launch
    nothing. Every boundary is a decline with its reason (:mod:`kitsune_backend.codegen.ops`
    lists the ops). A matmul whose bias add is left alone becomes one generated kernel with
    it where that is not slower (:mod:`kitsune_backend.passes.matmul_bias`). The kernels
    are then compiled ahead on the ``compile_workers`` processes
    (:mod:`kitsune_backend.codegen.precompile`).

    Before::

        amax = aten.amax(x, [-1], True); sub = aten.sub(x, amax); exp = aten.exp(sub)
        sum_1 = aten.sum(exp, [-1], True); div = aten.div(exp, sum_1); return div

    After::

        kitsune_fused_amax_sub_exp_sum_div_0 = kitsune_fused_amax_sub_exp_sum_div_0(x)
        return kitsune_fused_amax_sub_exp_sum_div_0
    """
    why = _why_not_fuse(gm, ctx)
    if why:
        return PassResult(declines=[Decline(STAGE, why)])
    device = _graph_device(ctx)
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
    result.stats.update(fused_regions=len(kept), nodes_fused=sum(len(r.nodes) for r in kept))
    if kept:
        shared = _rewrite(gm, ctx, grouping, kept)
        result.changed = True
        result.stats["kernels_shared"] = shared
        result.notes.append(f"{len(kept)} region(s), {result.stats['nodes_fused']} node(s) fused"
                            + (f"; {shared} region(s) reuse an identical kernel" if shared else ""))
    _fold_alone(gm, ctx, alone, result, can_launch=not cannot_launch)
    if result.changed:
        _compile_ahead(gm, ctx, device, result)
    return result


def _fold_alone(gm: fx.GraphModule, ctx: PassContext, alone: list[str], result: PassResult,
                can_launch: bool) -> None:
    """Regions of one op (named by their op) stay ATen, with a decline, except bias adds
    that become one generated kernel with their matmul where kernels can launch
    (:mod:`kitsune_backend.passes.matmul_bias`)."""
    folded = fold_lone_bias_adds(gm, ctx, alone if can_launch else [], STAGE)
    result.declines.extend(
        Decline(STAGE, "kept as ATen: a region of one op saves no memory pass", name)
        for name in alone if name not in folded.adds)
    result.declines.extend(folded.declines)
    result.notes.extend(folded.notes)
    if folded.adds:
        result.changed = True
        result.stats["matmul_bias_kernels"] = len(folded.adds)


def _compile_ahead(gm: fx.GraphModule, ctx: PassContext, device, result: PassResult) -> None:
    """Compile the graph's new kernels on the worker processes now, rather than one by one
    at their first launch (:mod:`kitsune_backend.codegen.precompile`)."""
    kernels = {id(n.target): n.target for n in gm.graph.nodes if isinstance(n.target, FusedKernel)}
    report = precompile(list(kernels.values()), ctx.config, device)
    result.stats.update(report.stats())
    result.notes.extend(report.notes())
    result.declines.extend(report.declines())


def _why_not_fuse(gm: fx.GraphModule, ctx: PassContext) -> str:
    if not ctx.config.fusion:
        return "fusion is off (config fusion=False): the graph runs as ATen ops"
    if has_symbolic_shapes(gm):
        return "dynamic shapes: generated kernels need static sizes, the graph runs as ATen ops"
    device = _graph_device(ctx)
    if device is None:
        return "no tensor inputs"
    if device.type not in ("cuda", "cpu"):
        return f"no Triton kernels on {device.type}: the graph runs as ATen ops"
    return ""


def _graph_device(ctx: PassContext):
    """The graph's device: the first CUDA input's (CPU scalars may sit beside it), else any."""
    for value in ctx.example_inputs:
        if isinstance(value, torch.Tensor) and value.device.type == "cuda":
            return value.device
    return ctx.device


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
    if region.kind == "pointwise":
        return pointwise_config(region.numel)
    return reduction_config(region.rows, region.columns)


def _inlined(region: Region) -> list[fx.Node]:
    """The constant and index sources ``region`` computes instead of reading."""
    return [n for n in region.external if constants.inlinable(n)]


def _computed_in_kernels(nodes: list[fx.Node], fused: set[fx.Node]) -> set[fx.Node]:
    """Sources (and reshapes of them) read only by fused kernels, which compute them."""
    dropped: set[fx.Node] = set()
    for node in reversed(nodes):
        if constants.inlinable(node) and node.users and all(
            u in fused or u in dropped for u in node.users
        ):
            dropped.add(node)
    return dropped


def _aten_region(region: Region, inputs: list[fx.Node], outputs: list[fx.Node]) -> fx.Graph:
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in inputs:
        env[node] = graph.placeholder(node.name)
        env[node].meta = dict(node.meta)
    for node in _inlined(region):
        env[node] = constants.aten_equivalent(graph, node)
    for node in region.nodes:
        env[node] = graph.node_copy(node, lambda a: env[a])
    graph.output(tuple(env[n] for n in outputs))
    return graph


def _rewrite(gm: fx.GraphModule, ctx: PassContext, grouping, kept: list[Region]) -> int:
    """Put one kernel call in place of each kept region; how many regions reuse the kernel
    of an earlier identical one (:func:`same_kernel_key`)."""
    nodes = list(gm.graph.nodes)
    order = schedule(grouping, kept, nodes)
    graph = fx.Graph()
    graph._codegen = gm.graph._codegen
    env: dict[fx.Node, fx.Node] = {}
    kernels: dict[tuple, FusedKernel] = {}  # by same_kernel_key
    regions_state: dict[str, list[str]] = {}
    numbers = {id(u): i for i, u in enumerate(u for u in order if isinstance(u, Region))}
    dropped = _computed_in_kernels(nodes, {n for region in kept for n in region.nodes})
    for unit in order:
        if not isinstance(unit, Region):
            if unit not in dropped:
                env[unit] = graph.node_copy(unit, lambda a: env[a])
            continue
        inlined = _inlined(unit)
        inputs = sorted(unit.external - set(inlined), key=grouping.index.__getitem__)
        outputs = [n for n in unit.nodes if any(u not in unit.context for u in n.users)]
        name = kernel_name(unit, numbers[id(unit)])
        generated = generate(unit, name, inputs, outputs, _config(unit))
        key = same_kernel_key(generated)
        kernel = kernels.get(key)
        if kernel is None:
            kernel = kernels[key] = FusedKernel(
                generated,
                _aten_region(unit, inputs, outputs),
                ctx.config.cache_dir,
                autotune=ctx.config.autotune,
                variant=lambda config, r=unit, i=inputs, o=outputs, n=name: generate(
                    r, n, i, o, config),
                device=outputs[0].meta["val"].device,
            )
        call = graph.create_node("call_function", kernel, tuple(env[a] for a in inputs), name=name)
        call.meta["kitsune_region"] = name  # the region; its target is the kernel it launches
        if len(outputs) == 1:
            call.meta["val"] = outputs[0].meta["val"]
            env[outputs[0]] = call
        else:
            call.meta["val"] = tuple(o.meta["val"] for o in outputs)
            for i, out in enumerate(outputs):
                item = graph.create_node("call_function", operator.getitem, (call, i), name=out.name)
                item.meta["val"] = out.meta["val"]
                env[out] = item
        names = [n.name for n in sorted([*inlined, *unit.nodes], key=grouping.index.__getitem__)]
        ctx.kernels.append(KernelRecord(kernel.__name__, names, kernel.source, kernel))
        regions_state[name] = names
    gm.graph = graph
    ctx.state["fusion"] = {"regions": regions_state}
    return len(kept) - len(kernels)


def same_kernel_key(generated: KernelSource) -> tuple:
    """What makes two generated kernels interchangeable: the code without its comments
    (which name the FX nodes) and with the kernel's name taken out, the exact layouts it
    was generated for, and its launch. Regions with equal keys share one kernel, so that
    it is compiled and loaded once: ResNet-18's repeated blocks give 28 kernels for 39
    regions (forward and backward)."""
    code = [line.split("  # ")[0] for line in generated.source.splitlines()
            if not line.startswith("#")]
    layouts = tuple((s.shape, s.stride, s.dtype) for s in (*generated.inputs, *generated.outputs))
    return ("\n".join(code).replace(generated.name, "KERNEL"), layouts, generated.grid,
            generated.config, generated.columns)
