"""Dropout as a seed, a Philox uniform and pointwise ops, which fusion puts in kernels.

``aten.native_dropout(x, p, train=True)`` (what ``F.dropout`` becomes in training) would be
a barrier to fusion: an opaque random op. Decomposed, it is::

    seed = aten.randint(0, 2**31 - 1, [], dtype=int64)   # one tiny kernel, from torch's RNG
    u = kitsune.philox_uniform(seed, x)                  # computed inside the kernel
    mask = u < 1 - p;  out = x * mask * (1 / (1 - p))

so the mask and the scaled output are computed in the kernel around them. The mask is
returned as ``native_dropout`` returns it: AOTAutograd saves it for the backward
(``native_dropout_backward(grad, mask, scale)``, fused too), so forward and backward agree.
The numbers are not eager's stream (no compiler promises that); the keep ratio and the
scaling are, and ``torch.manual_seed`` reproduces a run.
"""

from __future__ import annotations

import torch

from ..philox import PHILOX_UNIFORM

SEED_HIGH = 2**31 - 1
"""Seeds are drawn from [0, SEED_HIGH)."""


def native_dropout(x: torch.Tensor, p: float, train) -> tuple[torch.Tensor, torch.Tensor]:
    """``aten.native_dropout`` through :data:`~kitsune_backend.philox.PHILOX_UNIFORM`."""
    if not train or p == 0:
        return x.clone(), torch.ones_like(x, dtype=torch.bool)
    if p >= 1:
        return x * 0, torch.zeros_like(x, dtype=torch.bool)
    seed = torch.randint(0, SEED_HIGH, (), dtype=torch.int64, device=x.device)
    mask = PHILOX_UNIFORM(seed, x) < (1 - p)
    return x * mask * (1.0 / (1.0 - p)), mask
