"""Put a lone bias add back into its matmul, where that is not slower.

The decomposition table splits ``addmm`` into ``mm`` plus a pointwise bias add so that the
add fuses into the kernel after the matmul (a ReLU, GELU, residual add or layer norm). When
nothing fusable follows, for instance GPT-2's QKV projection feeding attention, the add
would stay a kernel of its own. ``addmm`` adds the bias inside the GEMM (cuBLASLt's bias
epilogue) instead: one launch fewer. But cuBLASLt picks its kernel differently with a bias
epilogue: on the H100, GPT-2's QKV GEMM (128 x 768 x 2304, fp32) lost split-K and took
about 15 us more than ``mm`` plus the add. So on CUDA both forms are timed once per layout
(:func:`addmm_timings`) and the faster one stays; on the CPU the add always goes back.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import unset_fake_temporarily

from .base import Decline

aten = torch.ops.aten

ADDMM_SLACK = 1.05
"""``addmm`` is kept when it takes at most this times the time of ``mm`` plus the add (one
launch fewer is worth a few percent)."""


def rejoin_lone_bias_adds(gm: fx.GraphModule, stage: str) -> tuple[int, list[Decline]]:
    """Replace each ``add(mm(a, b), bias)`` left in ``gm`` by ``addmm(bias, a, b)`` when
    ``bias`` is a 1-D tensor over the matmul's columns, of its dtype, the add is the
    matmul's only user and (on CUDA) ``addmm`` is not slower. Returns how many were
    replaced, and a decline for each add kept because ``addmm`` was slower.

    Before::

        mm = aten.mm(x, w); add = aten.add(mm, b); return add

    After::

        addmm = aten.addmm(b, x, w); return addmm
    """
    rejoined, declines = 0, []
    for add in list(gm.graph.nodes):
        pair = matmul_and_bias(add)
        if pair is None:
            continue
        mm, bias = pair
        timings = addmm_timings(*(_layout(n) for n in (*mm.args, bias)))
        if timings is not None and timings[0] > timings[1] * ADDMM_SLACK:
            declines.append(Decline(stage, (
                f"bias add kept after {mm.name}: addmm (cuBLASLt bias epilogue) took "
                f"{timings[0]:.1f} us, mm + add {timings[1]:.1f} us"), add.name))
            continue
        with gm.graph.inserting_before(add):
            addmm = gm.graph.call_function(aten.addmm.default, (bias, *mm.args))
        addmm.meta = dict(add.meta)
        add.replace_all_uses_with(addmm)
        gm.graph.erase_node(add)
        gm.graph.erase_node(mm)
        rejoined += 1
    return rejoined, declines


def matmul_and_bias(add: fx.Node) -> Optional[tuple[fx.Node, fx.Node]]:
    """``(mm, bias)`` when ``add`` is ``mm + bias`` (either order) with ``mm`` read by the
    add alone and ``bias`` 1-D over its columns, of its dtype and device; else ``None``."""
    if add.op != "call_function" or add.target != aten.add.Tensor or add.kwargs:
        return None
    if len(add.args) != 2 or not all(isinstance(a, fx.Node) for a in add.args):
        return None
    for mm, bias in (add.args, reversed(add.args)):
        if mm.target == aten.mm.default and len(mm.users) == 1 and _fits(mm, bias, add):
            return mm, bias
    return None


def _fits(mm: fx.Node, bias: fx.Node, add: fx.Node) -> bool:
    out, b, total = (n.meta.get("val") for n in (mm, bias, add))
    if not all(isinstance(t, torch.Tensor) for t in (out, b, total)):
        return False
    return (b.dim() == 1 and out.dim() == 2 and b.shape[0] == out.shape[1]
            and b.dtype == out.dtype == total.dtype and b.device == out.device)


def _layout(node: fx.Node) -> tuple:
    value = node.meta["val"]
    return tuple(value.shape), tuple(value.stride()), value.dtype, value.device


@functools.lru_cache(maxsize=None)
def addmm_timings(a: tuple, b: tuple, bias: tuple) -> Optional[tuple[float, float]]:
    """Microseconds of ``addmm`` and of ``mm`` plus the bias add on operands of these
    ``(shape, stride, dtype, device)`` layouts, timed with CUDA events (median of 15 after
    a warm-up), once per layout and process; ``None`` off CUDA."""
    device = a[3]
    if device.type != "cuda":
        return None
    with unset_fake_temporarily(), torch.no_grad():
        x, w, v = (_random(*layout) for layout in (a, b, bias))
        fused = _median_us(lambda: torch.addmm(v, x, w))
        split = _median_us(lambda: torch.mm(x, w) + v)
    return fused, split


def _random(shape: tuple, stride: tuple, dtype: torch.dtype, device) -> torch.Tensor:
    span = 1 + sum((n - 1) * s for n, s in zip(shape, stride)) if all(shape) else 0
    return torch.randn(span, device=device).to(dtype).as_strided(shape, stride)


def _median_us(fn, reps: int = 15) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return sorted(times)[reps // 2]
