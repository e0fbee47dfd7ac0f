"""Comparison helpers: compiled results against eager with tolerances that fit the dtype."""

from __future__ import annotations

import torch

# (rtol, atol) per dtype: fp32 allows for reordered sums and fused math; half types for
# their 8/11-bit mantissas.
TOLERANCES = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
}


def assert_close(actual, expected, msg: str = "") -> None:
    """Assert two (nested) results match; tensors by dtype tolerance, others exactly."""
    if isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(actual) == len(expected), msg
        for a, e in zip(actual, expected):
            assert_close(a, e, msg)
        return
    if not isinstance(expected, torch.Tensor):
        assert actual == expected, msg
        return
    rtol, atol = TOLERANCES.get(expected.dtype, (0, 0))
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=msg or None)


def random_like_model_input(shape, device="cpu", dtype=torch.float32, seed=None) -> torch.Tensor:
    """Fresh standard-normal input (never zeros), optionally from a fixed seed."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device, dtype)
