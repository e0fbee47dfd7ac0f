"""KitsuneOptimizer under torch.amp.GradScaler: the compiled update unscales the gradients
and skips the step on an inf on the device, giving what GradScaler with torch.optim gives."""

import copy

import pytest
import torch

import kitsune_backend
from kitsune_backend.models import MLP


def _scaled_steps(model, opt, batches, inject):
    """Steps under a GradScaler; at the steps in ``inject`` one gradient becomes inf.
    Returns the scale after each step."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2)
    scales = []
    for i, x in enumerate(batches):
        opt.zero_grad()
        scaler.scale(model(x).pow(2).mean()).backward()
        if i in inject:
            next(model.parameters()).grad.view(-1)[0] = float("inf")
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
    return scales


@pytest.mark.parametrize("kind, options", [
    (torch.optim.Adam, {"lr": 1e-2}),
    (torch.optim.SGD, {"lr": 1e-2, "momentum": 0.9}),
])
def test_an_injected_inf_skips_the_step_and_halves_the_scale_as_grad_scaler_does(kind, options):
    torch.manual_seed(0)
    model = MLP((8, 16, 4))
    twin = copy.deepcopy(model)
    opt = kitsune_backend.KitsuneOptimizer(kind, model.parameters(), **options)
    ref = kind(twin.parameters(), **options)
    batches = [torch.randn(5, 8) for _ in range(8)]
    inject = {1, 4}  # once while torch.optim runs (warm-up), once compiled
    scales = _scaled_steps(model, opt, batches, inject)
    ref_scales = _scaled_steps(twin, ref, batches, inject)
    assert scales == ref_scales
    assert scales[4] == scales[3] / 2
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if kind is torch.optim.Adam:  # the skipped steps did not count
        assert int(opt.state[next(model.parameters())]["step"]) == len(batches) - len(inject)
    stats = opt.get_stats()
    assert stats["update"] == "kitsune" and stats["compiled_steps"] >= 4
