"""KitsuneOptimizer against torch.optim: the same parameters after the same steps, state
dicts both ways, LR schedulers without recompiles, clipping, zero_grad, what it declines."""

import copy

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, given, settings

import kitsune_backend
from kitsune_backend import KitsuneOptimizer
from kitsune_backend.errors import KitsuneConfigError
from kitsune_backend.optim.optimizer import WARMUP_STEPS
from tests.conftest import DEVICES
from tests.helpers import TOLERANCES

CONFIGS = [
    (torch.optim.Adam, {"lr": 1e-2}),
    (torch.optim.Adam, {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": True, "maximize": True}),
    (torch.optim.AdamW, {"lr": 1e-2, "betas": (0.8, 0.99), "weight_decay": 0.05}),
    (torch.optim.SGD, {"lr": 1e-2}),
    (torch.optim.SGD, {"lr": 1e-2, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    (torch.optim.SGD, {"lr": 1e-2, "momentum": 0.8, "dampening": 0.1, "maximize": True}),
]


def _twins(shapes, dtype, seed=0, device="cpu"):
    """Two equal lists of parameters (the second for torch.optim)."""
    generator = torch.Generator().manual_seed(seed)
    ours = [torch.nn.Parameter(torch.randn(s, generator=generator).to(device, dtype))
            for s in shapes]
    return ours, [torch.nn.Parameter(p.detach().clone()) for p in ours]


def _set_grads(pairs, step, with_grad=None):
    generator = torch.Generator().manual_seed(1000 + step)
    for i, (a, b) in enumerate(pairs):
        if with_grad is not None and not with_grad(i, step):
            a.grad = b.grad = None
            continue
        g = torch.randn(a.shape, generator=generator).to(a.device, a.dtype)
        a.grad, b.grad = g.clone(), g.clone()


def _assert_same(ours, theirs, dtype, steps=1):
    rtol, atol = TOLERANCES[dtype]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=rtol * steps, atol=atol * steps)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind, options", CONFIGS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_every_rule_matches_torch_optim(kind, options, device):
    ours, theirs = _twins([(3, 4), (7,), (2, 3, 5)], torch.float32, device=device)
    opt, ref = KitsuneOptimizer(kind, ours, **options), kind(theirs, **options)
    for step in range(WARMUP_STEPS + 4):
        _set_grads(list(zip(ours, theirs)), step)
        opt.step()
        ref.step()
        _assert_same(ours, theirs, torch.float32)
    stats = opt.get_stats()
    assert stats["update"] == "kitsune" and stats["compiled_steps"] == 4
    assert stats["buckets"] == 1 and stats["parameters_compiled"] == 3
    assert stats["generated_kernels"] == 1  # every parameter's update in one kernel
    # ... which stores parameters and moments in place; Adam's step count is one more copy
    assert stats["update_kernels_per_step"] == (2 if "Adam" in kind.__name__ else 1)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=st.sampled_from(CONFIGS),
       shapes=st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
                       min_size=1, max_size=4),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       two_groups=st.booleans(), frozen=st.integers(-1, 3))
def test_random_parameters_groups_and_missing_gradients(config, shapes, dtype, two_groups,
                                                        frozen):
    """Random shapes and dtypes, one or two param groups with different learning rates, a
    parameter that never gets a gradient: the same parameters as torch.optim's."""
    kind, options = config
    if dtype != torch.float32 and kind is not torch.optim.SGD:
        # eps=1e-8 is 0 in half precision: torch.optim's own fp16 Adam then divides by zero
        options = {**options, "eps": 1e-3}
    ours, theirs = _twins(shapes, dtype)

    def groups(params):
        if not two_groups or len(params) < 2:
            return params
        return [{"params": params[:1], "lr": options["lr"] * 3}, {"params": params[1:]}]

    opt, ref = KitsuneOptimizer(kind, groups(ours), **options), kind(groups(theirs), **options)
    steps = WARMUP_STEPS + 3
    for step in range(steps):
        _set_grads(list(zip(ours, theirs)), step, with_grad=lambda i, _: i != frozen)
        opt.step()
        ref.step()
    _assert_same(ours, theirs, dtype, steps)
    assert opt.get_stats()["update"] == "kitsune"


def test_a_parameter_that_skips_a_step_keeps_its_own_step_count():
    """torch.optim does not advance a parameter without a gradient: kitsune neither."""
    ours, theirs = _twins([(4,), (5,)], torch.float32)
    opt, ref = KitsuneOptimizer(torch.optim.Adam, ours, lr=1e-2), torch.optim.Adam(theirs, lr=1e-2)
    skips = {(1, WARMUP_STEPS + 1)}  # parameter 1 has no gradient at one compiled step
    for step in range(WARMUP_STEPS + 4):
        _set_grads(list(zip(ours, theirs)), step, with_grad=lambda i, s: (i, s) not in skips)
        opt.step()
        ref.step()
        _assert_same(ours, theirs, torch.float32)
    assert [float(opt.state[p]["step"]) for p in ours] == [float(ref.state[p]["step"])
                                                           for p in theirs]


def _train(opt, model, steps, clip=None, set_to_none=True):
    torch.manual_seed(5)
    for _ in range(steps):
        opt.zero_grad(set_to_none=set_to_none)
        model(torch.randn(6, 8)).pow(2).mean().backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


@pytest.mark.parametrize("set_to_none", [True, False])
def test_an_unchanged_loop_with_clipping_and_zero_grad(set_to_none):
    model, twin = _mlp(), _mlp()
    opt = KitsuneOptimizer(torch.optim.AdamW, model.parameters(), lr=1e-2)
    ref = torch.optim.AdamW(twin.parameters(), lr=1e-2)
    _train(opt, model, 6, clip=0.5, set_to_none=set_to_none)
    _train(ref, twin, 6, clip=0.5, set_to_none=set_to_none)
    _assert_same(list(model.parameters()), list(twin.parameters()), torch.float32)
    opt.zero_grad(set_to_none=set_to_none)
    assert all((p.grad is None) == set_to_none for p in model.parameters())
    if not set_to_none:
        assert all(float(p.grad.abs().sum()) == 0 for p in model.parameters())


@pytest.mark.parametrize("kind", [torch.optim.Adam, torch.optim.SGD])
def test_state_dicts_load_both_ways(kind):
    options = {"lr": 1e-2, "momentum": 0.9} if kind is torch.optim.SGD else {"lr": 1e-2}
    model, twin = _mlp(), _mlp()
    opt = KitsuneOptimizer(kind, model.parameters(), **options)
    _train(opt, model, WARMUP_STEPS + 2)
    plain = kind(twin.parameters(), **options)  # kitsune's state into torch.optim
    twin.load_state_dict(model.state_dict())
    plain.load_state_dict(copy.deepcopy(opt.state_dict()))
    _train(opt, model, 3)
    _train(plain, twin, 3)
    _assert_same(list(model.parameters()), list(twin.parameters()), torch.float32)
    again = KitsuneOptimizer(kind, model.parameters(), **options)  # and back
    again.load_state_dict(copy.deepcopy(plain.state_dict()))
    again._steps = WARMUP_STEPS  # compiled from the next step
    _train(again, model, 3)
    _train(plain, twin, 3)
    _assert_same(list(model.parameters()), list(twin.parameters()), torch.float32)
    assert again.get_stats()["update"] == "kitsune"


def test_an_lr_scheduler_changes_the_rate_without_recompiling():
    model, twin = _mlp(), _mlp()
    opt = KitsuneOptimizer(torch.optim.SGD, model.parameters(), lr=0.1, momentum=0.9)
    ref = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    schedulers = [torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.7) for o in (opt, ref)]
    for _ in range(20):
        for o, m, s in ((opt, model, schedulers[0]), (ref, twin, schedulers[1])):
            _train(o, m, 1)
            s.step()
    _assert_same(list(model.parameters()), list(twin.parameters()), torch.float32)
    assert opt.get_stats()["update_graphs"] == 1  # one compile, whatever the rate
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.7 ** 20)


def test_what_it_leaves_to_torch_optim_is_said():
    params = [torch.nn.Parameter(torch.randn(4))]
    lbfgs = KitsuneOptimizer(torch.optim.LBFGS, params, lr=0.1)
    for _ in range(WARMUP_STEPS + 1):
        def closure():
            lbfgs.zero_grad()
            loss = (params[0] ** 2).sum()
            loss.backward()
            return loss
        lbfgs.step(closure)
    stats = lbfgs.get_stats()
    assert stats["update"] == "torch.optim" and "LBFGS is not one of" in stats["eager_reason"]

    class Custom(torch.optim.SGD):
        pass

    custom = KitsuneOptimizer(Custom, [torch.nn.Parameter(torch.randn(3))], lr=0.1)
    custom.param_groups[0]["params"][0].grad = torch.ones(3)
    for _ in range(WARMUP_STEPS + 1):
        custom.step()
    assert "Custom is not one of" in custom.get_stats()["eager_reason"]

    embedding = torch.nn.Embedding(10, 3, sparse=True)
    sparse = KitsuneOptimizer(torch.optim.SGD, embedding.parameters(), lr=0.1)
    for _ in range(WARMUP_STEPS + 1):
        sparse.zero_grad()
        embedding(torch.tensor([1, 2])).sum().backward()
        sparse.step()
    assert sparse.get_stats()["eager_reason"].startswith("sparse gradients")


def test_unknown_options_list_the_valid_ones():
    params = [torch.nn.Parameter(torch.randn(2))]
    with pytest.raises(KitsuneConfigError, match="Adam refused.*betas.*kitsune's options are:.*fusion"):
        KitsuneOptimizer(torch.optim.Adam, params, lr=1e-3, fusoin=False)
    with pytest.raises(ValueError, match="'num_streams' must be an int"):
        KitsuneOptimizer(torch.optim.Adam, params, num_streams="2")
    with pytest.raises(KitsuneConfigError, match="wraps a torch.optim.Optimizer class"):
        KitsuneOptimizer(torch.nn.Linear, params)


def test_model_option_compiles_the_model_with_kitsune():
    model, twin = _mlp(), _mlp()
    opt = KitsuneOptimizer(torch.optim.Adam, model.parameters(), lr=1e-2, model=model)
    ref = torch.optim.Adam(twin.parameters(), lr=1e-2)
    _train(opt, model, WARMUP_STEPS + 3)
    _train(ref, twin, WARMUP_STEPS + 3)
    _assert_same(list(model.parameters()), list(twin.parameters()), torch.float32)
    kinds = {r.name.split("_")[0] for s in kitsune_backend.history() for r in s.records}
    assert {"forward", "backward", "inference"} <= kinds  # the model's graphs and the update
    plans = opt.get_stats()["model_memory_plan"]  # the model's graphs, not the update's
    assert [p["graph"] for p in plans] == ["forward", "backward"]
    for plan in plans:
        assert plan["arena_bytes"] <= plan["single_stream_arena_bytes"] * 1.1 + 1
        assert plan["peak_planned_bytes"] >= plan["arena_bytes"]
        assert plan["eager_peak_estimate_bytes"] > 0


def test_amp_bf16_runs_the_forward_under_autocast_like_eager():
    """amp="bf16": the same losses as an eager loop under torch.autocast, to bf16 rounding."""
    model, twin = _mlp(), _mlp()
    opt = KitsuneOptimizer(torch.optim.Adam, model.parameters(), lr=1e-2, model=model,
                           amp="bf16")
    ref = torch.optim.Adam(twin.parameters(), lr=1e-2)
    torch.manual_seed(3)
    for _ in range(WARMUP_STEPS + 3):
        x = torch.randn(6, 8)
        opt.zero_grad()
        out = model(x)
        assert out.dtype == torch.bfloat16  # the forward ran under autocast
        loss = out.float().pow(2).mean()
        loss.backward()
        opt.step()
        ref.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected = twin(x).float().pow(2).mean()
        expected.backward()
        ref.step()
        torch.testing.assert_close(loss, expected, rtol=5e-2, atol=5e-2)
    with pytest.raises(KitsuneConfigError, match="amp='fp8'"):
        KitsuneOptimizer(torch.optim.Adam, model.parameters(), model=model, amp="fp8")
    with pytest.raises(KitsuneConfigError, match="needs model="):
        KitsuneOptimizer(torch.optim.Adam, model.parameters(), amp="bf16")


def test_grad_scaler_skips_a_step_with_an_inf_gradient_as_with_torch_optim():
    """fp16-style loss scaling through torch.amp.GradScaler: an injected inf gradient skips
    the update and halves the scale, with the wrapper exactly as with torch.optim."""
    model, twin = _mlp(), _mlp()
    opt = KitsuneOptimizer(torch.optim.Adam, model.parameters(), lr=1e-2)
    ref = torch.optim.Adam(twin.parameters(), lr=1e-2)
    scalers = [torch.amp.GradScaler("cpu", init_scale=1024.0) for _ in range(2)]
    torch.manual_seed(4)
    for step in range(WARMUP_STEPS + 4):
        x = torch.randn(6, 8)
        for m, o, scaler in ((model, opt, scalers[0]), (twin, ref, scalers[1])):
            o.zero_grad()
            scaler.scale(m(x).pow(2).mean()).backward()
            if step == WARMUP_STEPS + 2:
                next(m.parameters()).grad[0, 0] = float("inf")
            before = [p.detach().clone() for p in m.parameters()]
            scaler.step(o)
            scaler.update()
            if step == WARMUP_STEPS + 2:  # skipped: nothing moved
                assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
    assert scalers[0].get_scale() == scalers[1].get_scale() == 512.0
    _assert_same(list(model.parameters()), list(twin.parameters()), torch.float32)
    assert opt.get_stats()["update"] == "kitsune"
