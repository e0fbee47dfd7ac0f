"""Fewer kernels: ``cat`` inside regions, constants and ``arange`` computed in kernels,
bitwise ops, regions that grow by broadcasting. Structure (how many kernels) and values
against eager, on the CPU and (the ``cuda`` parameters, ``-m gpu``) on CUDA.

Constant folding is off here: these tests are about kernels computing constants, ``arange``
and gathers inline, and folding would turn those input-independent values into buffers
before fusion sees them (``tests/test_constant_fold.py`` tests that)."""

from __future__ import annotations

import pytest
import torch

import kitsune_backend
from kitsune_backend import models
from tests.conftest import DEVICES
from tests.helpers import HALF_TYPES, assert_close, rand
from tests.helpers import check as check_folding

NO_FOLDING = {"strict": True, "constant_folding": False}


def check(fn, *inputs, **kwargs):
    """:func:`tests.test_fusion_ops.check` with constant folding off."""
    return check_folding(fn, *inputs, options={"constant_folding": False}, **kwargs)


def fused_calls(record):
    """Names of the generated-kernel nodes in the post-fusion graph."""
    return [n.name for n in record.nodes_after("fusion") if n.extra.get("kitsune_region")]


def aten_calls(record):
    """Targets of the ATen calls left in the post-fusion graph (views included)."""
    return [n.target for n in record.nodes_after("fusion")
            if n.op == "call_function" and not n.extra.get("kitsune_region")
            and "getitem" not in n.target]


def branchy_inputs(device):
    torch.manual_seed(0)
    model = models.BranchyHeads(dim=64, heads=4, hidden=64).to(device).eval()
    return model, torch.randn(8, 64, device=device)


@pytest.mark.parametrize("device", DEVICES)
def test_branchy_bias_adds_and_cat_are_one_kernel(device):
    model, x = branchy_inputs(device)
    with torch.no_grad():
        compiled = torch.compile(model, backend="kitsune", options=NO_FOLDING)
        assert_close(compiled(x), model(x))
    record = kitsune_backend.last_compile().forward
    # four layer-norm heads (bias add, gelu, layer norm) and one kernel for the four
    # output bias adds and the cat; before: 4 + 4 standalone adds + 1 ATen cat
    assert len(fused_calls(record)) == 5, fused_calls(record)
    last = record.kernels[-1]
    assert last.name.startswith("kitsune_fused_add_cat")
    assert sum(name.startswith("add") for name in last.nodes) == 4 and "cat" in last.nodes
    assert not any("cat" in t or t.startswith("add") for t in aten_calls(record))


@pytest.mark.parametrize("device", DEVICES)
def test_branchy_trains_through_the_cat_kernel(device):
    model, x = branchy_inputs(device)
    session = check(model, x, grad=True)
    assert any(k.name.startswith("kitsune_fused_add_cat") for k in session.forward.kernels)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cat_of_pointwise_results_is_one_kernel(dim, device):
    sizes = {0: ((3, 5, 7), (2, 5, 7)), 1: ((3, 5, 7), (3, 4, 7)), -1: ((3, 5, 7), (3, 5, 3))}
    a, b = (rand(*s, device=device) for s in sizes[dim])
    record = check(lambda x, y: torch.cat([x.exp() + 1, torch.relu(y) * 2], dim), a, b).forward
    assert len(fused_calls(record)) == 1 and aten_calls(record) == []
    assert record.kernels[0].nodes[-1].startswith("cat")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_cat_mixed_with_loads_and_consumers(dtype, device):
    def fn(x, y, z):  # a cat of a computed value, a plain input and a nested cat, used twice
        c = torch.cat([torch.sigmoid(x), y, torch.cat([z, z * 3], 0)], 1)
        return torch.tanh(c) * 2, c + 1

    x, y, z = rand(4, 3, device=device, dtype=dtype), rand(4, 5, device=device, dtype=dtype), \
        rand(2, 1, device=device, dtype=dtype)
    record = check(fn, x, y, z).forward
    assert len(fused_calls(record)) == 1, fused_calls(record)


@pytest.mark.parametrize("device", DEVICES)
def test_cat_value_also_stored_by_its_own_kernel(device):
    def fn(x, y):  # the parts are outputs too: each element is written once
        a, b = x * 2, y + 1
        return torch.cat([a, b], 0).exp(), a, b

    record = check(fn, rand(3, 4, device=device), rand(5, 4, device=device)).forward
    assert len(fused_calls(record)) == 1


@pytest.mark.parametrize("device", DEVICES)
def test_cat_of_int_and_bool_values(device):
    def fn(i, j, m):
        return torch.cat([i * 2, j + 1], -1), torch.cat([m, i > 0], 0)

    i = torch.randint(-5, 5, (3, 4))
    j = torch.randint(-5, 5, (3, 2))
    m = torch.randn(2, 4) > 0
    check(fn, i.to(device), j.to(device), m.to(device))


@pytest.mark.parametrize("device", DEVICES)
def test_where_of_two_scalar_tensors_is_one_kernel(device):
    m = torch.randn(4, 5, device=device) > 0
    fn = lambda m: torch.where(m, torch.scalar_tensor(0.0, device=m.device),  # noqa: E731
                               torch.scalar_tensor(float("-inf"), device=m.device))
    record = check(fn, m).forward
    assert len(fused_calls(record)) == 1 and aten_calls(record) == []
    assert record.kernels[0].nodes == ["scalar_tensor", "scalar_tensor_1", "where"]


def causal_mask(x):
    n = x.shape[-1]
    i = torch.arange(n, device=x.device)
    mask = i[:, None] >= i[None, :]
    return x.masked_fill(~mask, float("-inf"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_causal_mask_into_masked_fill_is_one_kernel(dtype, device):
    record = check(causal_mask, rand(2, 7, 7, device=device, dtype=dtype)).forward
    assert len(fused_calls(record)) == 1 and aten_calls(record) == [], aten_calls(record)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_fill_ops_fold_into_consumers(dtype, device):
    def fn(x):
        ones = torch.ones(x.shape, dtype=x.dtype, device=x.device)
        full = torch.full((x.shape[-1],), 0.3, dtype=x.dtype, device=x.device)
        return (x * ones + full) * torch.zeros_like(x).add(2) + x.new_full((1,), -1.5) \
            + x.new_ones(()) - x.new_zeros(x.shape) + torch.full_like(x, 7)

    record = check(fn, rand(3, 6, device=device, dtype=dtype)).forward
    assert len(fused_calls(record)) == 1 and aten_calls(record) == [], aten_calls(record)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.float32])
def test_arange_values(dtype, device):
    def fn(x):
        a = torch.arange(3, 3 + 2 * x.shape[-1], 2, dtype=dtype, device=x.device)
        b = torch.arange(x.shape[0], dtype=dtype, device=x.device)
        return (a * 3 + b[:, None]).to(torch.float32) + x

    record = check(fn, rand(4, 5, device=device)).forward
    assert len(fused_calls(record)) == 1 and aten_calls(record) == [], aten_calls(record)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bool, torch.int64, torch.int32, torch.uint8])
def test_bitwise_and_logical_ops(dtype, device):
    def fn(a, b):
        if dtype == torch.bool:
            bits = (a & b) | (~a ^ b)
        else:
            bits = ((a & b) | (a ^ 3)) + (~b)
        logic = torch.logical_xor(a, b) | torch.logical_and(a, ~b if dtype == torch.bool else b)
        return bits, logic

    if dtype == torch.bool:
        a, b = rand(5, 6) > 0, rand(5, 6) > 0
    else:
        a, b = torch.randint(0, 100, (5, 6)).to(dtype), torch.randint(0, 100, (5, 6)).to(dtype)
    check(fn, a.to(device), b.to(device))


@pytest.mark.parametrize("device", DEVICES)
def test_region_grows_to_a_broadcast_shape(device):
    def fn(x, y):  # a (3,5) and a (4,) region meet in a (3,4,5) product; a is also returned
        a = x.exp() + 1
        return a[:, None, :] * (y * 2)[None, :, None] + 1, a

    record = check(fn, rand(3, 5, device=device), rand(4, device=device)).forward
    assert len(fused_calls(record)) == 1, record.declines


def test_growth_declined_when_a_region_value_does_not_feed_it():
    def fn(x, y):
        a = x.exp()
        b = a * 2  # b stays the region's sink, not an operand of the product
        return (a[:, None] * y).sum(), b

    record = check(fn, rand(3), rand(4)).forward
    reasons = [d.reason for d in record.declines]
    assert any("does not feed it" in r for r in reasons), reasons


@pytest.mark.parametrize("device", DEVICES)
def test_gpt2_style_mask_kernels(device):
    """GPT-2's mask: arange + 0, unsqueezes, le, new_ones & le, where of two scalar
    tensors: one kernel for the mask (the arange, new_ones and scalar tensors launch nothing)."""
    def fn(x):
        n = x.shape[-1]
        i = (torch.arange(n, device=x.device) + 0)[None, None, :, None]
        j = (torch.arange(n, device=x.device) + 0)[None, None, None, :]
        mask = i.new_ones((), dtype=torch.bool) & (j <= i)
        bias = torch.where(mask, torch.scalar_tensor(0.0, device=x.device),
                           torch.scalar_tensor(float("-inf"), device=x.device))
        return x + bias

    record = check(fn, rand(1, 2, 6, 6, device=device)).forward
    assert aten_calls(record) == [], aten_calls(record)
    assert len(fused_calls(record)) == 1, [k.nodes for k in record.kernels]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int64])
def test_gather_by_broadcast_index_tensors(dtype, device):
    def fn(x):  # i: (5, 1), j: (1, 4) index positions -> a (5, 4) gather, negative included
        i = (torch.arange(5, device=x.device) + 1)[:, None]
        j = torch.arange(4, device=x.device)[None, :]
        return x[i + 0, j * 1] * 2, x[i - 6, -1 - j] + x[j, i]

    x = (rand(6, 7, device=device) * 10).to(dtype)
    record = check(fn, x).forward
    assert aten_calls(record) == [], aten_calls(record)


def test_gather_by_data_indices_stays_aten_and_raises_like_eager(device="cpu"):
    """Index values from data could be out of range: eager raises then, and a kernel's
    masked load would silently read nothing, so such gathers stay ATen ``index`` calls.

    CPU only: on CUDA the out-of-range index is a device-side assert, which leaves the
    CUDA context unusable for every later test in the process."""
    def fn(x, i):
        return x[i, i * 0] * 2

    i = torch.randint(0, 6, (5, 1), device=device)
    record = check(fn, rand(6, 7, device=device), i, min_regions=0).forward
    assert any("comes from data" in d.reason for d in record.declines), record.declines
    compiled = torch.compile(fn, backend="kitsune")
    with pytest.raises(Exception, match="out of bounds|out of range"):
        compiled(rand(6, 7, device=device), torch.full((5, 1), 9, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_gpt2_mask_with_positions_is_one_kernel(device):
    """GPT-2's mask also compares positions gathered from a cumsum: with the gathers
    inside the region, the mask is one kernel besides the cumsum."""
    def fn(x, ids):
        n = x.shape[-1]
        pos = (ids != 0).cumsum(-1)
        b = torch.arange(1, device=x.device)[:, None, None, None]
        i = (torch.arange(n, device=x.device) + 0)[None, None, :, None]
        j = (torch.arange(n, device=x.device) + 0)[None, None, None, :]
        mask = (j <= i) & (pos[b, i] == pos[b, j])
        bias = torch.where(mask, torch.scalar_tensor(0.0, device=x.device),
                           torch.scalar_tensor(float("-inf"), device=x.device))
        return x + bias

    ids = torch.randint(0, 3, (1, 8), device=device)
    record = check(fn, rand(1, 2, 8, 8, device=device), ids).forward
    assert len(fused_calls(record)) <= 2, [k.nodes for k in record.kernels]
    assert [str(t) for t in aten_calls(record) if "index" in str(t)] == []


@pytest.mark.parametrize("device", DEVICES)
def test_gather_from_a_single_element(device):
    def fn(x):
        i = torch.arange(5, device=x.device)[:, None] * 0
        return x[i, i] + 1  # x is (1, 1): every lane reads element 0

    record = check(fn, rand(1, 1, device=device)).forward
    assert aten_calls(record) == [], aten_calls(record)


def test_half_arange_is_declined_with_a_reason():
    def fn(x):
        return (x + torch.arange(x.shape[-1], dtype=torch.float16)) * 2

    record = check(fn, rand(3, 5, dtype=torch.float16)).forward
    assert any("kernels compute integer" in d.reason for d in record.declines), record.declines


@pytest.mark.parametrize("device", DEVICES)
def test_views_of_fills_are_computed_in_place(device):
    def fn(x):
        full = torch.full((5, 1), 2.0, device=x.device).expand(5, 4).t()  # any view of a fill
        steps = torch.arange(20, device=x.device).view(4, 5)  # a reshape of an arange
        return x * full + steps

    record = check(fn, rand(4, 5, device=device)).forward
    assert len(fused_calls(record)) == 1 and aten_calls(record) == [], aten_calls(record)


@pytest.mark.parametrize("device", DEVICES)
def test_gather_from_a_computed_source(device):
    def fn(x):
        i = torch.arange(5, device=x.device) - 2  # -2 .. 2: negative ones count from the end
        steps = torch.arange(3, 3 + 2 * 12, 2, device=x.device).view(3, 4)
        return x + steps[i, -1 - i], torch.ones(3, 4, device=x.device)[i, i] * x

    record = check(fn, rand(5, device=device)).forward
    assert aten_calls(record) == [], aten_calls(record)
