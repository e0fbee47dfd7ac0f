"""The ATen decompositions AOTAutograd applies before kitsune sees a graph.

Composite ops whose pieces kitsune can fuse are broken into those pieces (softmax into
amax/sub/exp/sum/div, layer_norm into var_mean and pointwise ops, ...), so the fusion pass
only needs rules for primitive pointwise ops and reductions.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch._decomp import get_decompositions

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


def decomposition_table() -> dict[torch._ops.OperatorBase, Callable]:
    """The decomposition table handed to AOTAutograd."""
    return get_decompositions(DECOMPOSED_OPS)
