"""Is a backend's result the same as eager's? Tolerances and the comparison.

Every check call gets its own input batch, so a stale result (a CUDA graph replaying old
buffers) differs from a fresh one by far more than any tolerance.

* Inference outputs and micro-benchmark outputs: elementwise, per dtype. Whole models
  accumulate rounding differently once ops are fused or reordered, so these are looser
  than a single op's (``tests/helpers.py``) but tight enough for a wrong kernel to fail.
* Training: the first step starts from identical weights, so its loss is compared
  elementwise and its gradients by relative L2 error (elementwise fails on gradients near
  zero, where reordered sums legitimately differ most). Later steps start from weights
  that already differ slightly, and Adam amplifies that (it normalizes each parameter's
  step, so near-zero gradients that differ by rounding move weights by a full step): only
  their losses are compared, loosely, which still catches stale or missing results. Their
  gradients are not compared: on the H100, ResNet-18's gradients after two Adam steps
  differed from eager by 16-20% (relative L2) for Inductor, Dynamo's ``cudagraphs`` and
  kitsune alike, while every loss agreed within 2%. These tolerances assume TF32 is off (the harness's
  default): with TF32 convolutions, ResNet-18's first-step gradients differed by 6-11%
  from eager on the H100 for every backend, Dynamo's ``cudagraphs`` (same ATen ops) too.

A comparison reports ``tol_ratio``: error over allowed error, so 1.0 is the edge of the
tolerance and the table shows how much margin is left.
"""

from __future__ import annotations

import math
from typing import Any

import torch

GRAD_SAMPLE = 512
"""Elements taken from the start of each parameter's gradient."""

# (rtol, atol) per dtype for outputs compared elementwise.
OUTPUT_TOLERANCES = {
    torch.float64: (1e-6, 1e-7),
    torch.float32: (1e-3, 1e-4),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (6e-2, 6e-2),
}
# Observation key -> how it is compared: ("elementwise", rtol, atol), ("relative_l2", tol),
# or absent: elementwise with OUTPUT_TOLERANCES for its dtype.
RULES: dict[str, tuple] = {
    "step1_grads": ("relative_l2", 1e-2),
    "later_losses": ("elementwise", 2e-2, 1e-3),
}


def elementwise_error(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float
                      ) -> tuple[float, float]:
    """(largest absolute error, largest ``|a - e| / (atol + rtol * |e|)``). NaN where eager
    has none, or different shapes, give an infinite ratio."""
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


def relative_l2_error(actual: torch.Tensor, expected: torch.Tensor, tol: float
                      ) -> tuple[float, float]:
    """(largest absolute error, ``||a - e|| / ||e||`` over ``tol``); non-finite values or
    different shapes give an infinite ratio."""
    if actual.shape != expected.shape:
        return math.inf, math.inf
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    if not bool(torch.isfinite(a).all()):
        return math.inf, math.inf
    diff = a - e
    norm = float(e.norm())
    relative = float(diff.norm()) / norm if norm > 0 else (0.0 if diff.norm() == 0 else math.inf)
    return float(diff.abs().max()) if diff.numel() else 0.0, relative / tol


def _compare_one(key: str, actual: torch.Tensor, expected: torch.Tensor,
                 rules: dict[str, tuple]) -> tuple[float, float, str]:
    rule = rules.get(key) or ("elementwise", *OUTPUT_TOLERANCES.get(expected.dtype, (0.0, 0.0)))
    if rule[0] == "relative_l2":
        max_abs, ratio = relative_l2_error(actual, expected, rule[1])
        return max_abs, ratio, f"relative L2 error {ratio * rule[1]:.3g} > {rule[1]:g}"
    max_abs, ratio = elementwise_error(actual, expected, rule[1], rule[2])
    return max_abs, ratio, (f"max abs err {max_abs:.3g} is {ratio:.3g}x the tolerance "
                            f"(rtol={rule[1]:g}, atol={rule[2]:g})")


def compare_observations(observed: dict[str, Any], reference: dict[str, Any],
                         rules: dict[str, tuple] | None = None,
                         ) -> tuple[bool, float, float, str, dict[str, float]]:
    """Compare every entry of two observations (``rules`` override :data:`RULES` per key).

    Returns (ok, max abs error, worst ratio, what failed first, worst ratio per key).
    """
    rules = {**RULES, **(rules or {})}
    worst_abs, worst_ratio, failed, per_key = 0.0, 0.0, "", {}
    for key, expected in reference.items():
        pairs = _pairs(observed.get(key), expected)
        if pairs is None:
            return False, math.inf, math.inf, f"{key}: different structure", {key: math.inf}
        for index, (a, e) in enumerate(pairs):
            max_abs, ratio, text = _compare_one(key, a, e, rules)
            worst_abs, worst_ratio = max(worst_abs, max_abs), max(worst_ratio, ratio)
            per_key[key] = max(per_key.get(key, 0.0), ratio)
            if ratio > 1.0 and not failed:
                failed = f"{key}[{index}]: {text}"
    return not failed, worst_abs, worst_ratio, failed, per_key


def _pairs(actual: Any, expected: Any):
    if isinstance(expected, torch.Tensor):
        return [(actual, expected)] if isinstance(actual, torch.Tensor) else None
    if not isinstance(actual, (list, tuple)) or len(actual) != len(expected):
        return None
    if not all(isinstance(a, torch.Tensor) for a in actual):
        return None
    return list(zip(actual, expected))
