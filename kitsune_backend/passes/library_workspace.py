"""The cuBLAS workspace a stream pays for once it runs a matmul.

PyTorch gives cuBLAS one workspace per (handle, stream) that ran a matmul, allocated at
the stream's first matmul and kept until the workspaces are cleared; a CUDA graph captured
with its own workspaces (as kitsune's are, :func:`kitsune_backend.runtime.capture.own_cublas_workspaces`)
holds them in its memory pool for as long as it lives. So each side stream of a captured
graph that runs a matmul costs one workspace beside the caller's stream's, whatever the
matmul's size: 32 MiB on Hopper and Blackwell by default, which on a small model is more
than all its intermediates.

The size follows PyTorch's own rule (``parseChosenWorkspaceSize`` in
``aten/src/ATen/cuda/CublasHandlePool.cpp``): the ``CUBLAS_WORKSPACE_CONFIG`` variable
(``:SIZE:COUNT`` pairs, SIZE in KiB) when set, else 32 MiB on devices of compute capability
9.x, 10.x and 12.x and 8 MiB + 128 KiB on others. Only the cuBLAS workspace is counted
(a lower bound where torch also keeps a separate cuBLASLt one per stream).
"""

from __future__ import annotations

import os
import re
from typing import Optional

import torch
import torch.fx as fx

from ..graph_utils import iter_tensors, op_overload

aten = torch.ops.aten

WORKSPACE_OPS = frozenset({
    aten.mm, aten.bmm, aten.addmm, aten.baddbmm, aten.addbmm, aten._addmm_activation,
    aten.mv, aten.addmv,
})
"""The op packets that run a cuBLAS GEMM on the stream they are issued to."""

_CONFIG_PAIR = re.compile(r":([0-9]+):([0-9]+)")
_LARGE_DEFAULT_MAJORS = (9, 10, 12)


def cublas_workspace_bytes(device: Optional[torch.device]) -> int:
    """Bytes of one cuBLAS workspace on ``device`` (0 off CUDA)."""
    if device is None or device.type != "cuda":
        return 0
    config = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if config:
        pairs = _CONFIG_PAIR.findall(config)
        if pairs:
            return sum(int(size) * int(count) for size, count in pairs) * 1024
    major = torch.cuda.get_device_capability(device)[0] if torch.cuda.is_available() else 0
    return 4096 * 8 * 1024 if major in _LARGE_DEFAULT_MAJORS else 4096 * 1024 * 2 + 16 * 1024 * 8


def workspace_nodes(gm: fx.GraphModule) -> tuple[frozenset[fx.Node], Optional[torch.device]]:
    """The nodes that run a cuBLAS GEMM, and the device of their results."""
    found, device = set(), None
    for node in gm.graph.nodes:
        overload = op_overload(node)
        if overload is None or overload.overloadpacket not in WORKSPACE_OPS:
            continue
        found.add(node)
        for value in iter_tensors(node.meta.get("val")):
            device = device or value.device
    return frozenset(found), device
