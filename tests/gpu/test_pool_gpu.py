"""Max-pool decompositions on CUDA: generated kernels against ATen's CUDA pools (values and
indices bitwise, gradients). LeNet-5 training runs on CUDA through the ``cuda`` parameter of
``tests/test_pool_decompositions.py``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kitsune_backend
from tests.helpers import assert_close
from tests.helpers_cases import _pool_and_grad, _same

pytestmark = pytest.mark.gpu
DEV = "cuda"

CASES = {  # kernel, stride, padding, ceil_mode, input values
    "lenet": ((2, 2), (2, 2), (0, 0), False, "randn"),
    "googlenet_stem": ((3, 3), (2, 2), (0, 0), True, "randn"),
    "inception_branch": ((3, 3), (1, 1), (1, 1), False, "ties"),
    "padded_nan": ((3, 2), (2, 1), (1, 1), True, "nan"),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(CASES))
def test_compiled_pool_equals_cuda_aten(name, dtype):
    kernel, stride, padding, ceil_mode, values = CASES[name]
    x = torch.randn(2, 3, 13, 11, device=DEV)
    if values == "ties":
        x = x.round()
    elif values == "nan":
        x[x > 1.0] = float("nan")
    x = x.to(dtype)

    def pool(t):
        return F.max_pool2d(t, kernel, stride, padding, ceil_mode=ceil_mode, return_indices=True)

    grad = torch.randn(pool(x)[0].shape, device=DEV).to(dtype)
    values_c, indices_c, grad_c = _pool_and_grad(torch.compile(pool, backend="kitsune"), x, grad)
    values_e, indices_e, grad_e = _pool_and_grad(pool, x, grad)
    _same(values_c, values_e)
    assert torch.equal(indices_c, indices_e)
    assert_close(grad_c, grad_e)
    targets = [n.target for r in kitsune_backend.last_compile().records
               for n in r.nodes_after("fusion")]
    assert not any("max_pool2d" in t for t in targets), targets
