"""Is a backend's result the same as eager's? Tolerances and the comparison.

Whole models accumulate rounding differently once ops are fused or reordered, so the
tolerances here are looser than a single op's (``tests/helpers.py``) but still tight enough
that a wrong kernel, a stale CUDA-graph buffer or a missed update fails. The comparison
reports ``tol_ratio``: the largest ``|actual - expected| / (atol + rtol * |expected|)``, so
1.0 is the edge of the tolerance and the table shows how much margin is left.
"""

from __future__ import annotations

import math
from typing import Any

import torch

PARAM_SAMPLE = 512
"""Elements taken from the start of each parameter to compare after the training steps."""

# (rtol, atol) per dtype for a whole model's outputs and losses.
OUTPUT_TOLERANCES = {
    torch.float64: (1e-6, 1e-7),
    torch.float32: (1e-3, 1e-4),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (6e-2, 6e-2),
}
# Parameters after a few Adam steps (lr 1e-3): each step moves a weight by up to ~lr, even
# for a near-zero gradient, so the absolute tolerance is a fraction of one step.
PARAM_TOLERANCE = (1e-3, 1e-4)


def tolerance_ratio(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float
                    ) -> tuple[float, float]:
    """(largest absolute error, largest error / allowed error); NaN where eager has none, or a
    shape mismatch, gives an infinite ratio."""
    if actual.shape != expected.shape:
        return math.inf, math.inf
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    both_nan = torch.isnan(a) & torch.isnan(e)
    diff = (a - e).abs().masked_fill(both_nan, 0.0)
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, math.inf), diff)
    if diff.numel() == 0:
        return 0.0, 0.0
    ratio = diff / (atol + rtol * e.abs().nan_to_num(0.0))
    return float(diff.max()), float(ratio.max())


def compare_observations(observed: dict[str, Any], reference: dict[str, Any]
                         ) -> tuple[bool, float, float, str]:
    """Compare every entry of two observations; returns (ok, max abs error, worst ratio,
    what failed first)."""
    worst_abs, worst_ratio, failed = 0.0, 0.0, ""
    for key, expected in reference.items():
        actual = observed.get(key)
        pairs = _pairs(actual, expected)
        if pairs is None:
            return False, math.inf, math.inf, f"{key}: different structure"
        for index, (a, e) in enumerate(pairs):
            rtol, atol = PARAM_TOLERANCE if key == "params" else OUTPUT_TOLERANCES.get(
                e.dtype, (0.0, 0.0))
            max_abs, ratio = tolerance_ratio(a, e, rtol, atol)
            worst_abs, worst_ratio = max(worst_abs, max_abs), max(worst_ratio, ratio)
            if ratio > 1.0 and not failed:
                failed = (f"{key}[{index}] max abs err {max_abs:.3g} is {ratio:.3g}x the "
                          f"tolerance (rtol={rtol:g}, atol={atol:g})")
    return not failed, worst_abs, worst_ratio, failed


def _pairs(actual: Any, expected: Any):
    if isinstance(expected, torch.Tensor):
        return [(actual, expected)] if isinstance(actual, torch.Tensor) else None
    if not isinstance(actual, (list, tuple)) or len(actual) != len(expected):
        return None
    if not all(isinstance(a, torch.Tensor) for a in actual):
        return None
    return list(zip(actual, expected))
