"""Constant folding: input-independent values are computed at compile time, and only those
that are safe to share between calls."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

import kitsune_backend
from kitsune_backend.passes.constant_fold import FOLD_MAX_ELEMENTS
from tests.conftest import DEVICES
from tests.helpers import assert_close


def _compile(fn):
    return torch.compile(fn, backend="kitsune", options={"strict": True})


def _cleanup(session):
    record = session.forward
    code = "\n".join(line for line in record.graph_after("constant_fold").splitlines()
                     if not line.strip().startswith("#"))  # source comments name the ops
    return record.stats.get("constants_folded", 0), code


def _causal_mask_attention(x):
    # What GPT-2 builds on every call: position ids, a packed-sequence test, a causal mask.
    n = x.shape[-2]
    positions = (torch.arange(n, device=x.device) + 0).unsqueeze(0)
    first = positions[:, :1] - 1
    diff = torch.diff(positions, prepend=first, dim=-1)
    packed = (diff != 1).cumsum(-1)
    same = packed[:, :, None] == packed[:, None, :]
    causal = positions[:, None, :] <= positions[:, :, None]
    mask = torch.where(same & causal, 0.0, float("-inf"))
    return torch.softmax(x @ x.transpose(-1, -2) + mask, -1)


@pytest.mark.parametrize("device", DEVICES)
def test_gpt2_style_mask_becomes_one_constant(device):
    x = torch.randn(1, 16, 8, device=device)
    compiled = _compile(_causal_mask_attention)
    assert_close(compiled(x), _causal_mask_attention(x))
    x2 = torch.randn(1, 16, 8, device=device)
    assert_close(compiled(x2), _causal_mask_attention(x2))
    folded, code = _cleanup(kitsune_backend.last_compile())
    assert folded == 1
    assert "_kitsune_constant_0" in code
    for op in ("arange", "cumsum", "where", "eq.Tensor"):
        assert op not in code, op


@pytest.mark.parametrize("device", DEVICES)
def test_an_output_that_is_constant_is_fresh_each_call(device):
    fn = lambda x: (x + 1, torch.arange(6, device=x.device).view(2, 3) * 2)  # noqa: E731
    compiled = _compile(fn)
    expected = torch.arange(6, device=device).view(2, 3) * 2
    for _ in range(3):  # on CUDA: warm-up, capture, replay
        _, out = compiled(torch.randn(3, device=device))
        assert torch.equal(out, expected)
        out.add_(100)  # a caller writing into the output must not change the next call's


@pytest.mark.parametrize("device", DEVICES)
def test_random_values_are_never_folded(device):
    fn = lambda x: x + torch.rand(64, device=x.device)  # noqa: E731
    compiled = _compile(fn)
    x = torch.zeros(64, device=device) + 1  # the output, not the input, must change
    assert not torch.equal(compiled(x), compiled(x))
    assert _cleanup(kitsune_backend.last_compile())[0] == 0


def test_values_over_the_size_limit_stay_computed():
    n = FOLD_MAX_ELEMENTS + 1
    fn = lambda x: x + (torch.arange(n, device=x.device) % 7)  # noqa: E731
    x = torch.randn(n)
    assert_close(_compile(fn)(x), fn(x))
    assert _cleanup(kitsune_backend.last_compile())[0] == 0


def test_a_bare_arange_is_left_to_fusion():
    fn = lambda x: x * torch.arange(8, device=x.device)  # noqa: E731
    x = torch.randn(8)
    assert_close(_compile(fn)(x), fn(x))
    assert _cleanup(kitsune_backend.last_compile())[0] == 0


def test_folded_view_keeps_its_strides():
    # The folded value is read through an expand (stride 0) and a transpose.
    def fn(x):
        table = (torch.arange(12, device=x.device) * 3).view(3, 4)
        return x + table.t().unsqueeze(0).expand(2, 4, 3)

    x = torch.randn(2, 4, 3)
    assert_close(_compile(fn)(x), fn(x))
    folded, code = _cleanup(kitsune_backend.last_compile())
    assert folded == 1 and "expand" in code


def test_training_graph_with_a_constant_matches_eager():
    def fn(x):
        scale = torch.arange(1, 9, device=x.device).float().sqrt()
        return (x * scale).sum()

    x = torch.randn(4, 8, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    fn(x).backward()
    _compile(fn)(x2).backward()
    assert_close(x2.grad, x.grad)


def test_option_turns_folding_off():
    x = torch.randn(1, 16, 8)
    compiled = torch.compile(_causal_mask_attention, backend="kitsune",
                             options={"strict": True, "constant_folding": False})
    assert_close(compiled(x), _causal_mask_attention(x))
    folded, code = _cleanup(kitsune_backend.last_compile())
    assert folded == 0 and "arange" in code


_CONSTANT_OPS = {
    "add": lambda a, b: a + b,
    "mul": lambda a, b: a * b,
    "max": torch.maximum,
    "where": lambda a, b: torch.where(a > b, a, b - 1),
    "cumsum": lambda a, b: torch.cumsum(a.long(), -1).to(a.dtype) + b,
}


@settings(max_examples=15, deadline=None)
@given(ops=st.lists(st.sampled_from(sorted(_CONSTANT_OPS)), min_size=1, max_size=5),
       picks=st.lists(st.integers(0, 10), min_size=10, max_size=10))
def test_random_constant_chains_fold_and_match_eager(ops, picks):
    """Chains of ops on arange/full values, then mixed with the input: equal to eager, and
    no factory or op of the chain is left to run per call."""
    def fn(x):
        values = [torch.arange(6, device=x.device).float(),
                  torch.full((4, 6), 1.5, device=x.device),
                  torch.arange(4, device=x.device).view(4, 1).float()]
        for i, name in enumerate(ops):
            a, b = values[picks[2 * i] % len(values)], values[picks[2 * i + 1] % len(values)]
            values.append(_CONSTANT_OPS[name](a, b))
        return x * values[-1]

    x = torch.randn(4, 6)
    assert_close(_compile(fn)(x), fn(x))
    folded, code = _cleanup(kitsune_backend.last_compile())
    assert folded == 1
    assert "arange" not in code and "full" not in code, code
