"""Kernels that store a region's new value straight into the graph input it updates."""

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, given, settings

import kitsune_backend
from tests.conftest import DEVICES
from tests.helpers import assert_close

UPDATES = [lambda p, g: p.mul_(0.9).add_(g), lambda p, g: p.sub_(0.1 * g.tanh()),
           lambda p, g: torch.maximum(p, g, out=p), lambda p, g: p.addcmul_(g, g, value=0.5)]


def _run(fn, *tensors):
    """``fn`` compiled by kitsune and eagerly on equal copies: results and inputs after."""
    ours, theirs = [t.clone() for t in tensors], [t.clone() for t in tensors]
    out = kitsune_backend.compile(fn)(*ours)
    expected = fn(*theirs)
    assert_close(out, expected)
    assert_close(ours, theirs)  # the inputs were updated the same way
    return kitsune_backend.last_compile().forward


def _copies(record):
    return [n for n in record.nodes_after("fusion") if "copy_" in n.target]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("update", range(len(UPDATES)))
def test_an_update_of_an_input_is_stored_in_place(update, device):
    def step(p, g):
        UPDATES[update](p, g)
        return g * 2

    record = _run(step, torch.randn(64, device=device), torch.randn(64, device=device))
    assert not _copies(record)  # the kernel wrote p itself
    assert record.stats["stored_in_place"] == 1
    assert not [d for d in record.declines if "copy_" in d.reason]
    assert "is stored into in0, in place" in record.kernels[0].source


def test_the_old_value_read_in_the_same_kernel_is_still_right():
    def step(p, g):
        before = p * 2  # read before the update, in the same kernel
        p.add_(g)
        return before

    record = _run(step, torch.randn(33), torch.randn(33))
    assert not _copies(record)


@pytest.mark.parametrize("why, fn", [
    ("a reduction in the region", lambda p, g: p.sub_(p.mean())),
    ("another reader of the input", lambda p, g: (p.add_(g), p.t() if p.dim() > 1 else p.flip(0))[1]),
    ("a broadcast update", lambda p, g: p.add_(g[:1])),
])
def test_unsafe_updates_keep_their_copy(why, fn):
    record = _run(fn, torch.randn(16), torch.randn(16))
    assert _copies(record), why


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.sampled_from(["mul", "add", "tanh", "max", "read"]), min_size=1,
                    max_size=5), size=st.integers(1, 70), two=st.booleans())
def test_random_in_place_programs_match_eager(ops, size, two):
    """Random chains of in-place updates of one or two inputs, with reads of old values:
    the inputs and the results equal eager's."""

    def program(p, q, g):
        kept = []
        for op in ops:
            target = q if two and len(kept) % 2 else p
            if op == "mul":
                target.mul_(0.5)
            elif op == "add":
                target.add_(g)
            elif op == "tanh":
                target.tanh_()
            elif op == "max":
                torch.maximum(target, g, out=target)
            else:
                kept.append(target * 3)
        return tuple(kept) + (p + q,)

    _run(program, torch.randn(size), torch.randn(size), torch.randn(size))


def test_a_plugin_that_removes_an_in_place_kernel_is_refused(registered):
    def eliminate_dead_code(gm, ctx):
        gm.graph.eliminate_dead_code()
        return kitsune_backend.PassResult(changed=True)

    registered(eliminate_dead_code, stage="post_fusion")

    def step(p, g):  # the kernel's only effect is the store into p: nothing reads it
        p.mul_(0.9).add_(g)

    _run(step, torch.randn(8), torch.randn(8))
    declines = [str(d) for d in kitsune_backend.last_compile().declines]
    assert any("plugin pass 'eliminate_dead_code' skipped" in d and "in place" in d
               for d in declines), declines


def test_a_number_to_tensor_powers_fuses_and_matches_eager():
    """``pow(0.999, step)`` (Adam's bias correction): in the kernel, equal to eager's."""
    def bias_corrected(step, x):
        return x / (1 - torch.pow(0.999, step)).sqrt()

    for value in (1.0, 100.0, 54321.0):
        torch._dynamo.reset()
        record = _run(bias_corrected, torch.tensor(value), torch.randn(16))
        assert len(record.kernels) == 1 and "tl.exp(" in record.kernels[0].source
