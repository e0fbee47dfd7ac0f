"""matmul_bias: a matmul plus a lone bias add as one generated kernel.

The decomposition table splits ``addmm`` into ``mm`` plus a pointwise bias add, so that the
add fuses into the kernel after the matmul (a GELU, a residual add, a layer norm). Where
nothing fusable follows, the add is a region of one op, a kernel of its own after cuBLAS's
one or two (small-M GEMMs run split-K): GPT-2's QKV projection, which feeds attention, is
three launches per layer. Here such an ``add(mm(a, b), bias)`` becomes one generated kernel
(:mod:`kitsune_backend.codegen.matmul`) when the ``matmul_kernels`` option allows:

* ``"auto"`` (default): on CUDA, the kernel's tiles and cuBLAS's ``mm`` plus the add are
  timed on operands of the real layouts, cold in L2 as a model's weights are
  (:mod:`kitsune_backend.codegen.matmul_timing`), and the kernel is used when it takes at
  most ``SLACK`` times cuBLAS's time. Each new layout is compiled and timed once per
  process; matmuls of fewer than ``MIN_ROWS`` rows, where cuBLAS wins, are not timed. Off
  CUDA nothing can be timed, so the add stays.
* ``"always"``: the kernel is used wherever the pattern fits (the fastest tile on CUDA,
  the heuristic's on the CPU); ``"never"``: the add always stays.

``addmm`` itself is not used instead: cuBLASLt's bias-epilogue GEMM gives up split-K.

The chosen pairs become one :class:`~kitsune_backend.codegen.plans.KernelPlan` node each;
the ``kernels`` stage generates them.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.fx as fx

from ..codegen.matmul import (MATMUL_DTYPES, MatmulTile, matmul_bias_name, matmul_bias_source,
                              precision, tiles)
from ..codegen.matmul_timing import time_choices
from ..codegen.plans import KernelPlan
from ..codegen.source import TensorSpec
from ..ir import META_REGION, Decline, PassContext, PassResult

aten = torch.ops.aten

STAGE = "matmul_bias"

MIN_ROWS = 16
"""``auto`` does not time a matmul of fewer rows: ``tl.dot`` needs tiles of at least 16, and
cuBLAS's matrix-vector kernels win there."""

SLACK = 1.05
"""The generated kernel is used when it takes at most this times cuBLAS's ``mm`` plus the
bias add: one or two launches fewer are worth a few percent."""


def matmul_and_bias(add: fx.Node) -> Optional[tuple[fx.Node, fx.Node]]:
    """``(mm, bias)`` when ``add`` is ``mm + bias`` (either order): ``mm`` a 2-D ``aten.mm``
    read by the add alone, ``bias`` one value per column (shape ``[N]`` or ``[1, N]``), all
    of one float dtype the kernel supports, on one device; else ``None``."""
    if add.op != "call_function" or add.target != aten.add.Tensor or add.kwargs:
        return None
    if len(add.args) != 2 or not all(isinstance(a, fx.Node) for a in add.args):
        return None
    for mm, bias in (add.args, tuple(reversed(add.args))):
        if mm.target == aten.mm.default and len(mm.users) == 1 and _fits(mm, bias, add):
            return mm, bias
    return None


def _fits(mm: fx.Node, bias: fx.Node, add: fx.Node) -> bool:
    values = [n.meta.get("val") for n in (*mm.args, bias, mm, add)]
    if not all(isinstance(v, torch.Tensor) for v in values):
        return False
    a, b, v, out, total = values
    if len({t.dtype for t in values}) != 1 or a.dtype not in MATMUL_DTYPES:
        return False
    if len({t.device for t in values}) != 1:
        return False
    return tuple(v.shape) in ((out.shape[1],), (1, out.shape[1])) and total.shape == out.shape


def fold_matmul_bias(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Replace each add of ``ctx.lone_ops`` (bias adds that fusion left alone) that
    :func:`matmul_and_bias` accepts by one matmul-plus-bias kernel plan, where the
    ``matmul_kernels`` option and (on CUDA) the timing allow.

    Before::

        mm = aten.mm(x, w); add = aten.add(mm, b); return add

    After::

        kitsune_mm_bias_0 = kitsune_mm_bias_0(x, w, b); return kitsune_mm_bias_0
    """
    result = PassResult()
    nodes = {n.name: n for n in gm.graph.nodes}
    pairs = [(nodes[name], matmul_and_bias(nodes[name])) for name in ctx.lone_ops or ()
             if name in nodes]
    pairs = [(add, pair) for add, pair in pairs if pair is not None]
    if not pairs:
        return result
    if ctx.config.matmul_kernels == "never":
        result.declines.append(Decline(STAGE, (
            f"{len(pairs)} bias add(s) kept after their mm: option matmul_kernels='never'")))
        return result
    folded = 0
    for add, (mm, bias) in pairs:
        specs = [TensorSpec.of(n) for n in (*mm.args, bias, add)]
        dot_precision = precision(specs[0].dtype)
        device = add.meta["val"].device
        choice, why = _choose(specs, dot_precision, device, ctx, ctx.config.matmul_kernels)
        if choice is None:
            result.declines.append(Decline(STAGE, f"bias add kept after {mm.name}: {why}",
                                           add.name))
            continue
        name = _replace(gm, mm, add, bias, _plan(specs, choice, dot_precision, mm, add),
                        f"kitsune_mm_bias_{folded}")
        result.notes.append(f"{name}: {mm.name} + bias as one generated kernel ({why})")
        ctx.regions[name] = [mm.name, add.name]
        folded += 1
    if folded:
        gm.graph.lint()
        result.changed = True
        result.stats["matmul_bias_kernels"] = folded
    return result


def _choose(specs: list[TensorSpec], dot_precision: str, device: torch.device,
            ctx: PassContext, mode: str) -> tuple[Optional[MatmulTile], str]:
    """The tile to generate on ``device``, with why; ``(None, why not)`` when the add stays."""
    candidates = tiles(dot_precision)
    if device.type != "cuda" and specs[0].dtype == torch.bfloat16:
        return None, "Triton's interpreter gets bf16 dot products wrong (raw bits)"
    if device.type != "cuda":
        if mode == "always":
            tile = candidates[0]
            return tile, f"matmul_kernels='always', heuristic tile {tile.describe()}"
        return None, ("no CUDA device to time a generated matmul against cuBLAS on "
                      "(matmul_kernels='auto'; 'always' uses it untimed)")
    if 0 in (*specs[0].shape, specs[1].shape[1]):
        return None, "an empty matmul: nothing to time, cuBLAS and the add handle it"
    if mode == "auto" and specs[0].shape[0] < MIN_ROWS:
        return None, (f"{specs[0].shape[0]} row(s): cuBLAS's matrix-vector kernels win, "
                      f"the kernel's tiles hold at least {MIN_ROWS} rows")
    try:
        timings = time_choices(tuple(specs), dot_precision, candidates, ctx.config, device,
                               ctx.process.kernel_cache, ctx.process.compile_pool)
    except Exception as exc:  # a failed timing keeps cuBLAS, with the reason
        return None, f"timing the generated matmul failed: {type(exc).__name__}: {exc}"
    tile, best = min(timings.tiles.items(), key=lambda item: item[1])
    said = f"{best:.1f} us with {tile.describe()}, cuBLAS mm + add {timings.cublas:.1f} us"
    if mode == "always" or best <= timings.cublas * SLACK:
        return tile, said
    return None, f"the generated matmul is slower: {said}"


def _plan(specs: list[TensorSpec], tile: MatmulTile, dot_precision: str, mm: fx.Node,
          add: fx.Node) -> KernelPlan:
    """The kernel plan of ``add(mm(a, b), bias)``; its ATen ops are ``mm`` then the add."""
    graph = fx.Graph()
    a, b, bias = (graph.placeholder(f"in{i}") for i in range(3))
    product = graph.call_function(aten.mm.default, (a, b))
    graph.output((graph.call_function(aten.add.Tensor, (product, bias)),))
    names = (mm.name, add.name)
    return KernelPlan(matmul_bias_name(specs[0], specs[1]), graph,
                      lambda _config: matmul_bias_source(names, *specs, tile, dot_precision),
                      list(names), add.meta["val"].device, tunable=False)


def _replace(gm: fx.GraphModule, mm: fx.Node, add: fx.Node, bias: fx.Node,
             plan: KernelPlan, name: str) -> str:
    """Put a call of ``plan`` named ``name`` in place of ``mm`` and ``add``; the call's
    name (FX makes it unique)."""
    with gm.graph.inserting_before(add):
        call = gm.graph.create_node("call_function", plan, (*mm.args, bias), name=name)
    call.meta["val"] = add.meta["val"]
    call.meta[META_REGION] = call.name
    add.replace_all_uses_with(call)
    gm.graph.erase_node(add)
    gm.graph.erase_node(mm)
    return call.name

