"""Dtypes kitsune may not generate kernels for still run correctly, with the reason kept."""

import pytest
import torch

import kitsune_backend
from tests.conftest import DEVICES
from tests.helpers import assert_close


def pointwise_chain(x):
    return (x * 2 + 1).abs().sqrt() * x


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex64, torch.int32, torch.float16])
def test_any_dtype_runs_correctly(dtype, device):
    if dtype == torch.int32:
        x = torch.randint(-50, 50, (6, 7), device=device, dtype=dtype)
        fn = lambda x: (x * 3 + 1) % 7 - x  # noqa: E731
    elif dtype == torch.complex64:
        x = torch.randn(6, 7, device=device, dtype=dtype)
        fn = lambda x: x * x.conj() + 1j  # noqa: E731
    else:
        x = torch.randn(6, 7, device=device, dtype=dtype)
        fn = pointwise_chain
    compiled = torch.compile(fn, backend="kitsune")
    assert_close(compiled(x), fn(x))
    record = kitsune_backend.last_compile().forward
    assert not record.fallback_reason


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_devices_in_one_graph_stay_correct(device):
    """A CPU scalar tensor next to device tensors (a common pattern) is not a problem."""
    scale = torch.tensor(3.0)
    fn = lambda x: x * scale.to(x.device) + 1  # noqa: E731
    x = torch.randn(5, device=device)
    assert_close(torch.compile(fn, backend="kitsune")(x), fn(x))
