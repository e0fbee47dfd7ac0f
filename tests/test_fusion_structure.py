"""The shape of fusion's result: how many kernels, which nodes, which reasons."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import kitsune_backend
from tests.conftest import DEVICES
from tests.helpers import check, rand


def _kernel_nodes(record):
    return [n for n in record.nodes_after("kernels") if n.extra.get("kitsune_region")]


@pytest.mark.parametrize("device", DEVICES)
def test_chain_of_ten_pointwise_ops_is_one_kernel(device):
    def fn(x):
        y = x * 2
        y = y + 1
        y = torch.relu(y)
        y = y - 0.5
        y = torch.sigmoid(y)
        y = y * y
        y = torch.exp(y)
        y = y / 3
        y = torch.tanh(y)
        return y.abs()

    record = check(fn, rand(8, 33, device=device)).forward
    assert len(record.kernels) == 1
    assert len(_kernel_nodes(record)) == 1
    assert len(record.kernels[0].nodes) == 10
    assert record.stats["kernels"] == 1


@pytest.mark.parametrize("device", DEVICES)
def test_softmax_over_last_dim_is_one_kernel(device):
    record = check(lambda x: torch.softmax(x, -1), rand(16, 100, device=device)).forward
    assert len(record.kernels) == 1
    assert record.stats["kernels"] == 1
    assert record.kernels[0].name.startswith("kitsune_fused_amax_sub_exp_sum_div")


@pytest.mark.parametrize("device", DEVICES)
def test_layer_norm_forward_is_one_kernel(device):
    fn = lambda x, w, b: F.layer_norm(x, (64,), w, b)  # noqa: E731
    record = check(fn, rand(8, 64, device=device), rand(64, device=device),
                   rand(64, device=device)).forward
    assert len(record.kernels) == 1
    assert record.stats["kernels"] == 1


def test_identical_regions_share_one_kernel():
    def fn(x, y, z):
        return torch.relu(x * 2) + 1, torch.relu(y * 2) + 1, torch.relu(z * 2) + 1

    x, y = rand(8, 33), rand(8, 33)
    record = check(fn, x, y, rand(8, 34)).forward  # z: another shape, another kernel
    assert record.stats["fused_regions"] == 3 and record.stats["kernels_shared"] == 1
    first, second, third = _kernel_nodes(record)
    assert first.target == second.target != third.target  # what each call launches
    assert [k.name for k in record.kernels] == [first.target, first.target, third.target]
    assert record.kernels[1].nodes != record.kernels[0].nodes  # each region keeps its nodes
    assert "reuse an identical kernel" in " ".join(
        note for p in record.passes if p.name == "kernels" for note in p.notes)


def test_regions_alike_but_for_dtype_do_not_share():
    fn = lambda x, y: (torch.relu(x * 2) + 1, torch.relu(y * 2) + 1)  # noqa: E731
    record = check(fn, rand(8, 33), rand(8, 33).double()).forward
    assert record.stats["fused_regions"] == 2 and record.stats["kernels_shared"] == 0


def test_kernel_record_and_meta_name_the_region():
    record = check(lambda x: torch.relu(x + 1) * 2, rand(4, 4)).forward
    kernel = record.kernels[0]
    assert kernel.nodes == ["add", "relu", "mul"]
    assert "# FX nodes: add, relu, mul" in kernel.source
    assert "@triton.jit" in kernel.source
    (node,) = _kernel_nodes(record)
    assert node.extra["kitsune_region"] == kernel.name


def test_library_call_ends_a_region_with_a_reason():
    def fn(x, w):
        return torch.relu(torch.mm(torch.sigmoid(x) * 2, w) + 1) * 3

    record = check(fn, rand(4, 8), rand(8, 8), min_regions=2).forward
    assert len(record.kernels) == 2
    reasons = [str(d) for d in record.declines]
    assert any("mm" in r and "library call" in r for r in reasons), reasons


def test_random_op_is_not_fused():
    torch.manual_seed(0)

    def fn(x):
        return torch.rand_like(x) + x * 2 + 1

    compiled = torch.compile(fn, backend="kitsune", options={"strict": True})
    compiled(rand(4, 4))
    record = kitsune_backend.last_compile().forward
    assert any("random op" in d.reason for d in record.declines), record.declines


def test_shape_change_ends_a_region_with_a_reason():
    def fn(x, y):
        return (x.exp() + 1).sum(0) * y  # reduction over dim 0, then a row-sized product

    record = check(fn, rand(6, 5), rand(5)).forward
    assert record.stats["fused_regions"] >= 1


def test_permute_of_region_value_is_a_boundary():
    def fn(x):
        return (torch.relu(x + 1).t() * 2).contiguous() + 1

    record = check(fn, rand(4, 6), min_regions=1).forward
    assert any("not fused" in d.reason for d in record.declines) or len(record.kernels) >= 1


def test_fusion_off_declines_and_stays_correct():
    record = check(lambda x: x.exp() + 1, rand(4, 4), min_regions=0,
                   options={"fusion": False}).forward
    assert record.kernels == []
    assert any("fusion is off" in d.reason for d in record.declines)


def test_cpu_without_interpreter_runs_aten_with_reason(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    record = check(lambda x: torch.relu(x + 1) * 2, rand(4, 4), min_regions=0).forward
    assert record.kernels == []
    assert any("TRITON_INTERPRET" in d.reason for d in record.declines)


def test_dynamic_shapes_fuse_into_kernels_of_symbolic_sizes():
    fn = torch.compile(lambda x: torch.relu(x + 1) * 2, backend="kitsune",
                       options={"strict": True}, dynamic=True)
    x = rand(5, 4)
    torch.testing.assert_close(fn(x), torch.relu(x + 1) * 2)
    record = kitsune_backend.last_compile().forward
    (entry,) = record.kernels
    assert len(entry.kernel.generated.symbols) == 2  # both sizes are kernel arguments
    assert not any("dynamic shapes" in d.reason for d in record.declines)


def test_single_op_region_is_kept_as_aten_with_reason():
    record = check(lambda x, w: torch.mm(x, w).exp(), rand(4, 4), rand(4, 4), min_regions=0).forward
    assert record.kernels == []
    assert any("one op" in d.reason for d in record.declines)


def test_fusion_is_deterministic():
    fn = lambda x, y: torch.softmax(x * y + 1, -1) * x.sigmoid()  # noqa: E731
    first = check(fn, rand(4, 9), rand(9)).forward
    torch._dynamo.reset()
    second = check(fn, rand(4, 9), rand(9)).forward
    assert [k.source for k in first.kernels] == [k.source for k in second.kernels]


def test_invariants_hold_after_fusion():
    record = check(lambda x: torch.log_softmax(x, -1) + x.relu(), rand(3, 7),
                   options={"debug": True}).forward
    assert "fusion" in record.stages


@pytest.mark.parametrize("out_of_region_user", [True, False])
def test_intermediate_with_outside_user_is_materialized(out_of_region_user):
    def fn(x, w):
        y = torch.relu(x * 2)
        z = y + 1
        return (torch.mm(y, w) if out_of_region_user else y * 3), z.exp()

    check(fn, rand(4, 4), rand(4, 4))


def test_reshapes_inside_a_region_are_folded():
    def fn(x):
        y = torch.relu(x * 2).reshape(6, 4).unsqueeze(0)
        return (y + 1).squeeze(0).view(24).sigmoid()

    record = check(fn, rand(4, 6)).forward
    assert len(record.kernels) == 1
    assert record.stats["kernels"] == 1


def test_debug_dump_has_kernel_sources(tmp_path):
    check(lambda x: torch.softmax(x, -1) * 2, rand(3, 5), options={"debug_dir": str(tmp_path)})
    dumped = [p for p in tmp_path.rglob("kernels/*.py")]
    assert dumped and dumped[0].name.startswith("kitsune_fused_amax")
    assert "@triton.jit" in dumped[0].read_text()


def test_siblings_reading_one_input_share_a_kernel():
    def fn(x, g):
        return x.exp() + 1, torch.sigmoid(x) * 2, (x * g).sum(0), g.sum(0)

    record = check(fn, rand(6, 5), rand(6, 5)).forward
    assert record.stats["kernels"] == 2  # one pointwise kernel, one column-sum kernel


def test_gpt2_shaped_block_makes_no_cycle():
    """GPT-2's shape: embeddings -> ln_1 -> attention (SDPA, a barrier) -> residual -> ln_2 ->
    MLP (library calls, tanh GELU) -> residual -> ln_f. The last residual add must not join
    ln_2's region (a cycle through the MLP). It once did: region ids were reused after
    merges, and the cycle search skipped a region it took for one already seen."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    d, heads = 16, 2
    wte, wpe = torch.nn.Embedding(50, d), torch.nn.Embedding(8, d)
    ln_1, ln_2, ln_f = (torch.nn.LayerNorm(d) for _ in range(3))
    qkv, proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
    fc, out = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)

    def gpt2_block(ids):
        t = ids.shape[1]
        x = wte(ids) + wpe(torch.arange(t))
        q, k, v = qkv(ln_1(x)).split(d, dim=-1)
        q, k, v = (z.view(1, t, heads, d // heads).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + proj(a.transpose(1, 2).reshape(1, t, d))
        x = x + out(F.gelu(fc(ln_2(x)), approximate="tanh"))
        return ln_f(x)

    with torch.no_grad():
        check(gpt2_block, torch.randint(0, 50, (1, 8)), min_regions=3)


def test_region_ids_are_never_reused(monkeypatch):
    """Merges remove regions; a new region must still get an id no region ever had (the
    cycle search tells regions apart by id)."""
    import kitsune_backend.passes.grouping as grouping

    made = []
    real = grouping.new_region
    monkeypatch.setattr(
        grouping, "new_region", lambda *a, **k: made.append(real(*a, **k)) or made[-1]
    )

    def fn(x, w):  # small pointwise regions absorbed into the reductions they feed
        y = (x * w).relu()
        s = y.sum(-1, keepdim=True)
        z = (x - 1).sigmoid() + s  # the sigmoid region is absorbed here, then removed
        return z.amax(-1), (z * 2).exp(), (w * 3).tanh() + 1  # a region started after it

    check(fn, rand(4, 6), rand(6))
    ids = [r.id for r in made]
    assert len(made) >= 2 and len(ids) == len(set(ids)), ids


def test_tiny_gpt2_from_transformers_fuses_without_cycle():
    """The model the cycle was found on (skipped where transformers is not installed)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64,
                                     n_positions=16, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        check(lambda i: model(input_ids=i, use_cache=False).logits, ids, min_regions=3)


def test_convolution_bias_is_added_in_the_kernel_after_it():
    """conv(x, w, b) -> relu is the bias-free convolution plus one kernel (bias add + relu),
    where ATen would launch the convolution, its bias add and the relu; gradients match."""
    fn = lambda x, w, b: torch.relu(F.conv2d(x, w, b, padding=1))  # noqa: E731
    session = check(fn, rand(2, 3, 7, 7), rand(4, 3, 3, 3), rand(4), grad=True)
    forward = session.forward
    (kernel,) = forward.kernels
    assert kernel.nodes[:2] == ["add", "relu"]
    code = forward.graph_after("fusion")
    assert code.count("aten.convolution.default(") == 1
    assert re.search(r"aten\.convolution\.default\(\w+, \w+, None,", code)


def test_convolution_without_bias_is_left_alone():
    fn = lambda x, w: torch.relu(F.conv2d(x, w)) * 2  # noqa: E731
    forward = check(fn, rand(2, 3, 7, 7), rand(4, 3, 3, 3)).forward
    assert [n.target for n in forward.nodes_after("cleanup")].count("convolution.default") == 1
