"""Real models through ``torch.compile(backend="kitsune")`` against eager: training (losses,
gradients, buffers) and inference (no_grad, inference_mode), on CPU and (``-m gpu``) CUDA."""

import copy

import pytest
import torch
import torch.nn.functional as F

import kitsune_backend
from kitsune_backend.models import MLP, BranchyHeads, RunningStats, SmallCNN, TransformerBlock
from tests.conftest import DEVICES
from tests.helpers import assert_close

# name -> (model factory, input shape, number of classes for the loss)
TRAINING_MODELS = {
    "mlp": (lambda: MLP((32, 64, 48, 10)), (16, 32), 10),
    "cnn_batchnorm_inplace_relu": (lambda: SmallCNN(3, 10), (4, 3, 8, 8), 10),
    "transformer_block": (lambda: TransformerBlock(32, 4, dropout=0.0), (2, 8, 32), None),
    "buffer_mutation": (lambda: RunningStats(16), (8, 16), None),
}


def _loss(out, target, classes):
    if classes is None:
        return (out * target).sum() / out.numel()
    return F.cross_entropy(out, target)


def _target(shape, classes, device):
    if classes is None:
        return torch.randn(shape, device=device)
    return torch.randint(0, classes, (shape[0],), device=device)


def _train_and_compare(name, device, steps=3, options=None):
    factory, in_shape, classes = TRAINING_MODELS[name]
    torch.manual_seed(0)
    eager = factory().to(device)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, backend="kitsune", options=options or {})
    for step in range(steps):
        x = torch.randn(in_shape, device=device)  # fresh inputs every step
        out_eager = eager(x)
        out_compiled = compiled(x)
        target = _target(out_eager.shape, classes, device)
        loss_eager = _loss(out_eager, target, classes)
        loss_compiled = _loss(out_compiled, target, classes)
        assert_close(loss_compiled, loss_eager, f"{name} loss, step {step}")
        loss_eager.backward()
        loss_compiled.backward()
        for (pname, p_e), p_c in zip(eager.named_parameters(), compiled_model.parameters()):
            assert_close(p_c.grad, p_e.grad, f"{name} grad of {pname}, step {step}")
        for (bname, b_e), b_c in zip(eager.named_buffers(), compiled_model.buffers()):
            assert_close(b_c, b_e, f"{name} buffer {bname}, step {step}")
        with torch.no_grad():
            for p_e, p_c in zip(eager.parameters(), compiled_model.parameters()):
                p_e -= 0.01 * p_e.grad
                p_c -= 0.01 * p_c.grad
                p_e.grad = p_c.grad = None
    return kitsune_backend.last_compile()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(TRAINING_MODELS))
def test_training_matches_eager(name, device):
    session = _train_and_compare(name, device)
    names = [r.name for r in session.records]
    assert "forward" in names and "backward" in names, names
    for record in session.records:
        assert not record.fallback_reason, f"{record.name} fell back: {record.fallback_reason}"


@pytest.mark.parametrize("device", DEVICES)
def test_training_with_every_feature_off_matches_eager(device):
    options = {"fusion": False, "streams": False, "cuda_graphs": False, "memory_pool": False}
    _train_and_compare("cnn_batchnorm_inplace_relu", device, options=options)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_inference_matches_eager(context, device):
    torch.manual_seed(0)
    model = BranchyHeads(dim=32, heads=3, hidden=24).to(device).eval()
    compiled = torch.compile(model, backend="kitsune")
    with context():
        for _ in range(3):
            x = torch.randn(4, 32, device=device)
            assert_close(compiled(x), model(x))
    session = kitsune_backend.last_compile()
    assert [r.name for r in session.records] == ["inference"]


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_in_training_drops_and_backprops_consistently(device):
    """Random masks are not comparable with eager's, so check what must hold: roughly p of
    the activations are zeroed, survivors are scaled by 1/(1-p), and the gradient flows only
    through the survivors."""
    torch.manual_seed(0)
    model = torch.nn.Dropout(p=0.25).train()
    compiled = torch.compile(model, backend="kitsune")
    x = (torch.rand(256, 64, device=device) + 0.5).requires_grad_()
    out = compiled(x)
    kept = out != 0
    assert 0.2 < 1 - kept.float().mean().item() < 0.3
    assert_close(out[kept], x[kept].detach() / 0.75)
    out.sum().backward()
    assert_close(x.grad, kept.float() / 0.75)
    second = compiled(x)
    assert not torch.equal(second != 0, kept), "two calls drew the same dropout mask"


@pytest.mark.parametrize("device", DEVICES)
def test_transformer_block_with_dropout_trains(device):
    """Dropout on: compiled training runs, the loss is finite and gradients exist."""
    torch.manual_seed(0)
    model = TransformerBlock(32, 4, dropout=0.1).to(device).train()
    compiled = torch.compile(model, backend="kitsune")
    loss = compiled(torch.randn(2, 8, 32, device=device)).pow(2).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("device", DEVICES)
def test_recompiles_for_a_new_shape_stay_correct(device):
    torch.manual_seed(0)
    model = MLP((16, 32, 4)).to(device)
    compiled = torch.compile(model, backend="kitsune")
    for batch in (2, 5, 9, 5):
        x = torch.randn(batch, 16, device=device)
        assert_close(compiled(x), model(x))
