"""KitsuneOptimizer on the GPU: an unchanged training loop with the model compiled too, the
update captured in a CUDA graph, the same parameters as torch.optim's."""

import copy

import pytest
import torch

import kitsune_backend
from kitsune_backend.models import MLP, LeNet5
from tests.helpers import TOLERANCES

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("kind, make, shape", [
    (torch.optim.Adam, lambda: MLP((784, 256, 128, 10)), (64, 784)),
    (torch.optim.SGD, lambda: LeNet5(), (64, 1, 28, 28)),
])
def test_a_training_loop_with_the_wrapper_matches_torch_optim(kind, make, shape, no_tf32):
    torch.manual_seed(0)
    model = make().cuda()
    twin = copy.deepcopy(model)
    options = {"lr": 1e-3} if kind is torch.optim.Adam else {"lr": 1e-2, "momentum": 0.9}
    opt = kitsune_backend.KitsuneOptimizer(kind, model.parameters(), model=model, **options)
    ref = kind(twin.parameters(), **options)
    for step in range(10):
        x = torch.randn(shape, device="cuda")
        for m, o in ((model, opt), (twin, ref)):
            o.zero_grad()
            m(x).float().pow(2).mean().backward()
            o.step()
    rtol, atol = TOLERANCES[torch.float32]
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=rtol * 10, atol=atol * 10)
    stats = opt.get_stats()
    assert stats["update"] == "kitsune" and stats["generated_kernels"] == 1
    assert all(c.startswith("replay") for c in stats["captured"]), stats["captured"]
    assert stats["kitsune_update_ms"] is not None and stats["eager_update_ms"] is not None
