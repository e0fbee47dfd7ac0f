"""compile_step where no CUDA graph can be made (the CPU): the step runs as itself, with the
reason; what it records of the optimizers a step uses. (Captures: tests/gpu/test_step_gpu.py.)"""

import pytest
import torch
import torch.nn.functional as F

import kitsune_backend
from kitsune_backend.models import MLP
from kitsune_backend.optim.step import _hyperparameters, _OptimizerLog


def _setup():
    torch.manual_seed(0)
    model = MLP((8, 16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.detach()

    return model, opt, step


def test_cpu_tensors_run_the_step_itself_with_the_reason():
    model, _, step = _setup()
    compiled = kitsune_backend.compile_step(step)
    x, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 3])
    before = [p.detach().clone() for p in model.parameters()]
    loss = compiled(x, y)
    assert loss.shape == () and torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # it ran
    stats = compiled.get_stats()
    assert "not on a CUDA device" in stats["reason"]
    assert stats["calls"] == 1 and stats["uncaptured"] == 1 and stats["captures"] == 0
    assert "three-part path" in kitsune_backend.explain(compiled)
    assert compiled.__name__ == "step"


def test_a_step_without_tensor_arguments_is_not_captured():
    calls = []

    @kitsune_backend.compile_step(warmup=1)
    def step():
        calls.append(1)
        return 3

    assert step() == 3 and step() == 3 and len(calls) == 2
    assert "batch must be passed" in step.get_stats()["reason"]


@pytest.mark.parametrize("warmup", [0, -1, 1.5, "2"])
def test_a_bad_warmup_is_refused(warmup):
    with pytest.raises(ValueError, match="warmup is a positive int"):
        kitsune_backend.compile_step(lambda x: x, warmup=warmup)


def test_the_log_keeps_the_wrapper_not_the_optimizer_it_wraps():
    model = MLP((8, 16, 4))
    wrapper = kitsune_backend.KitsuneOptimizer(torch.optim.Adam, model.parameters(), lr=1e-3)
    plain = torch.optim.SGD(MLP((8, 4)).parameters(), lr=0.1)
    with _OptimizerLog() as log:
        for opt in (wrapper, plain):
            opt.step()  # no gradients: nothing to update, the hook still fires
    assert set(map(id, log.used())) == {id(wrapper), id(plain)}


def test_hyperparameters_leave_out_only_the_wrappers_float_learning_rate():
    model = MLP((8, 4))
    wrapper = kitsune_backend.KitsuneOptimizer(torch.optim.Adam, model.parameters(), lr=1e-3)
    plain = torch.optim.Adam(MLP((8, 4)).parameters(), lr=1e-3)
    assert "lr" not in _hyperparameters(wrapper)[0] and "betas" in _hyperparameters(wrapper)[0]
    assert _hyperparameters(plain)[0]["lr"] == 1e-3
    before = _hyperparameters(plain)
    plain.param_groups[0]["weight_decay"] = 0.1
    assert _hyperparameters(plain) != before
