"""decompose: the ATen decompositions AOTAutograd applies before kitsune sees a graph.

Composite ops whose pieces kitsune can fuse are broken into those pieces (softmax into
amax/sub/exp/sum/div, layer_norm into var_mean and pointwise ops, ...), so the fusion pass
only needs rules for primitive pointwise ops and reductions. ``var``/``var_mean`` are
decomposed here into ``sum``, ``sub``, ``mul`` and ``div`` (two-pass variance, computed in
fp32 for fp16/bf16 inputs) rather than PyTorch's prims, which fusion does not know.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.fx as fx
from torch._decomp import get_decompositions

from ..ir import PassContext, PassResult
from . import dropout_decomposition, maxpool_decompositions, transformer_decompositions

aten = torch.ops.aten

# cumsum becomes a masked sum (``cumsum_as_masked_sum``) over dims this short, for inputs
# with at most this many elements times the dim's length: beyond that the O(n^2) work and
# the masks' registers cost more than ATen's scan.
CUMSUM_MAX_DIM = 1024
CUMSUM_MAX_WORK = 1 << 22

# ``reduction`` argument values of the loss ops (ATen's ``at::Reduction``).
_REDUCTION_NONE, _REDUCTION_MEAN = 0, 1

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
    broadcast bias into the output and then runs a beta=1 GEMM: two kernels. Where no
    pointwise op follows, the add stays too (an ``addmm`` would give up split-K), and the
    matmul_bias stage makes such an ``mm`` and its add one generated kernel where that is
    not slower (:mod:`kitsune_backend.passes.matmul_bias`)."""
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


def nll_loss_backward_as_where(grad_output, self, target, weight, reduction, ignore_index,
                               total_weight):
    """``nll_loss_backward`` over an (N, C) batch as one ``where``: -grad (divided by the
    total weight for a mean, times the class weight when there is one) at each row's target
    class, 0 elsewhere and on rows whose target is ``ignore_index``. That fuses into the
    ``log_softmax`` backward after it; ATen would zero a buffer and scatter into it (two
    kernels). Other shapes are left alone (``NotImplemented``)."""
    if self.dim() != 2 or target.dim() != 1:
        return NotImplemented
    # Every op on the (N, C) grid, none on a lone scalar, so all of it fuses into one kernel.
    grad = grad_output.unsqueeze(1) if reduction == _REDUCTION_NONE else grad_output
    grad = grad.expand(self.shape)
    if reduction == _REDUCTION_MEAN:
        grad = grad / total_weight
    value = -(grad if weight is None else grad * weight)
    target = target.unsqueeze(1)
    classes = torch.arange(self.shape[1], device=self.device).unsqueeze(0)
    hit = (classes == target) & (target != ignore_index)
    return torch.where(hit, value, 0).to(self.dtype)


def cumsum_as_masked_sum(x, dim, *, dtype=None):
    """``cumsum`` of integers or bools over a short dim as a masked sum:
    ``out[i] = sum_j where(j <= i, x[j], 0)``. O(n^2) work, but a reduction fusion turns into
    one kernel with what computes ``x``; ATen runs a cast and a two-kernel scan. Integer sums
    are exact in any order, so this equals eager bitwise. Floats (input or ``dtype``) and
    longer dims are left alone (``NotImplemented``)."""
    if x.dim() == 0 or x.is_floating_point() or x.is_complex():
        return NotImplemented
    dim = dim % x.dim()
    n = x.shape[dim]
    if n > CUMSUM_MAX_DIM or x.numel() * n > CUMSUM_MAX_WORK:
        return NotImplemented
    out_dtype = dtype if dtype is not None else torch.int64
    if out_dtype.is_floating_point or out_dtype.is_complex:
        return NotImplemented  # a float sum is exact in no particular order
    classes = torch.arange(n, device=x.device)
    mask = (classes.unsqueeze(0) <= classes.unsqueeze(1)).view(
        [n, n] + [1] * (x.dim() - dim - 1))
    return torch.where(mask, x.to(out_dtype).unsqueeze(dim), 0).sum(dim + 1, dtype=out_dtype)


def decomposition_table() -> dict[torch._ops.OperatorBase, Callable]:
    """The decomposition table handed to AOTAutograd."""
    table = get_decompositions(DECOMPOSED_OPS)
    table[aten.addmm.default] = addmm_as_mm_and_bias
    table[aten.convolution.default] = convolution_then_bias
    table[aten.var_mean.correction] = var_mean_correction
    table[aten.var.correction] = var_correction
    table[aten.nll_loss_backward.default] = nll_loss_backward_as_where
    table[aten.cumsum.default] = cumsum_as_masked_sum
    table[aten.max_pool2d_with_indices.default] = maxpool_decompositions.max_pool2d_with_indices
    table[aten.max_pool2d_with_indices_backward.default] = (
        maxpool_decompositions.max_pool2d_with_indices_backward)
    table[aten.native_dropout.default] = dropout_decomposition.native_dropout
    table[aten._transformer_encoder_layer_fwd.default] = (
        transformer_decompositions.transformer_encoder_layer_fwd)
    table[aten._native_multi_head_attention.default] = (
        transformer_decompositions.native_multi_head_attention)
    return table


def report_decompositions(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """The decompose stage's record. The decompositions themselves ran inside AOTAutograd's
    trace (:func:`decomposition_table` is handed to it), before the graph reached kitsune:
    this stage only says how many ops the table covers; the graph is unchanged."""
    table = decomposition_table()
    return PassResult(notes=[f"AOTAutograd applied kitsune's table of {len(table)} "
                             "decompositions while it traced this graph"],
                      stats={"decompositions": len(table)})
