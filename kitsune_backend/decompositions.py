"""The ATen decompositions AOTAutograd applies before kitsune sees a graph.

Composite ops whose pieces kitsune can fuse are broken into those pieces (softmax into
amax/sub/exp/sum/div, layer_norm into var_mean and pointwise ops, ...), so the fusion pass
only needs rules for primitive pointwise ops and reductions. ``var``/``var_mean`` are
decomposed here into ``sum``, ``sub``, ``mul`` and ``div`` (two-pass variance, computed in
fp32 for fp16/bf16 inputs) rather than PyTorch's prims, which fusion does not know.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch._decomp import get_decompositions

from . import pool_decompositions

aten = torch.ops.aten

DECOMPOSED_OPS = [
    aten._softmax,
    aten._log_softmax,
    aten._softmax_backward_data,
    aten._log_softmax_backward_data,
    aten.native_layer_norm,
    aten.native_layer_norm_backward,
    aten._native_batch_norm_legit_functional,
    aten._native_batch_norm_legit_no_training,
    aten._native_batch_norm_legit,  # what the no_training decomposition calls (mutating form)
    aten.native_batch_norm_backward,
]


def _dims(x: torch.Tensor, dim: Optional[Sequence[int]]) -> list[int]:
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return list(range(x.dim()))
    if isinstance(dim, int):
        return [dim % max(x.dim(), 1)]
    return [d % max(x.dim(), 1) for d in dim]


def var_mean_correction(
    x: torch.Tensor, dim=None, *, correction=None, keepdim: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``var_mean`` as sums: mean = sum(x)/n, var = sum((x - mean)^2)/(n - correction)."""
    dims = _dims(x, dim)
    n = 1
    for d in dims:
        n *= x.shape[d]
    correction = 1 if correction is None else correction
    wide = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    mean = aten.sum.dim_IntList(wide, dims, True) / n
    diff = wide - mean
    var = aten.sum.dim_IntList(diff * diff, dims, keepdim) / max(n - correction, 0)
    if not keepdim:
        mean = aten.squeeze.dims(mean, dims)
    return var.to(x.dtype), mean.to(x.dtype)


def var_correction(x: torch.Tensor, dim=None, *, correction=None, keepdim: bool = False):
    """``var`` through :func:`var_mean_correction`."""
    return var_mean_correction(x, dim, correction=correction, keepdim=keepdim)[0]


def addmm_as_mm_and_bias(bias, mat1, mat2, *, beta=1, alpha=1):
    """``addmm`` as ``mm`` plus a pointwise bias add, which fusion then merges into the
    kernel after the matmul (Inductor does the same). ATen's ``addmm`` first copies the
    broadcast bias into the output and then runs a beta=1 GEMM: two kernels, and on the H100
    cuBLAS picked slower kernels for GPT-2's layers that way (measured with
    ``python -m benchmarks.top_kernels gpt2 kitsune inductor-ro``)."""
    out = aten.mm.default(mat1, mat2)
    if alpha != 1:
        out = out * alpha
    if beta == 0:
        return out
    return out + (bias if beta == 1 else bias * beta)


def convolution_then_bias(input, weight, bias, stride, padding, dilation, transposed,
                          output_padding, groups):
    """``convolution`` with a bias as a bias-free convolution plus a pointwise bias add,
    which fusion merges into the kernel after the convolution (the ReLU, say). ATen adds
    a convolution's bias in a kernel of its own anyway, so this never adds a launch.
    Without a bias the op is left alone (``NotImplemented``)."""
    if bias is None:
        return NotImplemented
    out = aten.convolution.default(input, weight, None, stride, padding, dilation, transposed,
                                   output_padding, groups)
    return out + bias.view([1, -1] + [1] * (out.dim() - 2))


def decomposition_table() -> dict[torch._ops.OperatorBase, Callable]:
    """The decomposition table handed to AOTAutograd."""
    table = get_decompositions(DECOMPOSED_OPS)
    table[aten.addmm.default] = addmm_as_mm_and_bias
    table[aten.convolution.default] = convolution_then_bias
    table[aten.var_mean.correction] = var_mean_correction
    table[aten.var.correction] = var_correction
    table[aten.max_pool2d_with_indices.default] = pool_decompositions.max_pool2d_with_indices
    table[aten.max_pool2d_with_indices_backward.default] = (
        pool_decompositions.max_pool2d_with_indices_backward)
    return table
