"""A rough cost per node from shape metadata: FLOPs, bytes, and microseconds on the device.

Only ratios matter: the stream pass compares the estimated time of one stream with that of
several, so the constants are round numbers for an H100-class GPU, not a calibrated model.
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx

from ..graph_utils import iter_tensors

aten = torch.ops.aten

LAUNCH_US = 2.0  # a small kernel's time on the device, even in a CUDA graph
FLOPS_PER_US = 100e6  # 100 TFLOP/s
BYTES_PER_US = 2.5e6  # 2.5 TB/s
EVENT_US = 0.5  # an event wait between streams inside a CUDA graph


def _numel(t: torch.Tensor) -> int:
    return math.prod(int(s) for s in t.shape)


def _nbytes(t: torch.Tensor) -> int:
    return _numel(t) * t.element_size()


def node_flops(node: fx.Node) -> int:
    """Multiply-adds x2 of matmuls and convolutions; one per output element otherwise."""
    out = list(iter_tensors(node.meta.get("val")))
    ins = [n.meta.get("val") for n in node.all_input_nodes]
    ins = [t for t in ins if isinstance(t, torch.Tensor)]
    target = getattr(node.target, "overloadpacket", None)
    if target in (aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.matmul) and out:
        a = [t for t in ins if t.dim() >= 2]
        inner = int(a[0].shape[-1]) if a else 1
        return 2 * _numel(out[0]) * inner
    if target in (aten.convolution, aten.convolution_backward) and len(ins) >= 2:
        weight = ins[1]
        per_out = _numel(weight) // max(1, int(weight.shape[0]))
        return 2 * sum(_numel(t) for t in out) * per_out
    return sum(_numel(t) for t in out)


def node_bytes(node: fx.Node) -> int:
    """Bytes read and written: every tensor input and output, once."""
    ins = [n.meta.get("val") for n in node.all_input_nodes]
    total = sum(_nbytes(t) for t in ins if isinstance(t, torch.Tensor))
    return total + sum(_nbytes(t) for t in iter_tensors(node.meta.get("val")))


def node_cost_us(node: fx.Node) -> float:
    """Estimated device time of one node: launch floor plus the larger of compute and memory."""
    return LAUNCH_US + max(node_flops(node) / FLOPS_PER_US, node_bytes(node) / BYTES_PER_US)
