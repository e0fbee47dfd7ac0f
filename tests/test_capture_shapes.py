"""CUDA graphs for changing shapes, on CPU: the batch_split analysis, padding, signatures.

The analysis runs on the graphs Dynamo hands kitsune (``dynamic=True``). The captured
runtime runs with its capture step replaced by :class:`ReplayOnCpu` (static buffers of the
capture's shapes, filled as a replay fills them, the schedule run on them at each replay):
everything but the CUDA graph itself, which ``tests/gpu/test_capture_shapes_gpu.py`` covers.
"""

import collections
import contextlib

import hypothesis
import hypothesis.strategies as st
import pytest
import torch
import torch.nn.functional as F

import kitsune_backend
from kitsune_backend.binding import capture as binding_capture
from kitsune_backend.ir import BatchSplit
from kitsune_backend.passes import batch_split
from kitsune_backend.runtime import capture as runtime_capture
from kitsune_backend.runtime.batch_padding import BatchPadder, bucket, copy_rows
from kitsune_backend.runtime.shape_cache import ShapeCache, signature

from .helpers import assert_close


class ReplayOnCpu:
    """Stands in for a captured instance (``runtime.capture._Instance``) on CPU."""

    def __init__(self, run, args, static, stream, registry, caller_outputs=(), pads=None):
        self.run, self.pads = run, pads or {}
        self.args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        self.inplace, self.buffers, self.copied = [], [], ()

    def outputs_free(self):
        return True

    def statics_match(self, args):
        return True

    inputs_match = statics_match

    def replay(self, args):
        for i, x in enumerate(args):
            if i in self.pads:
                copy_rows(self.args[i], x, self.pads[i])
            elif isinstance(x, torch.Tensor):
                self.args[i].copy_(x)
            else:
                assert x == self.args[i], "an int input outside its capture's signature"
        return self.run(*self.args)


class _Stream:
    def wait_stream(self, other):
        pass


@pytest.fixture
def cpu_capture(monkeypatch):
    """Compiles on CPU get the captured runtime, with :class:`ReplayOnCpu` as capture."""
    monkeypatch.setattr(binding_capture, "capture_decline", lambda gm, inputs, static: "")
    monkeypatch.setattr(runtime_capture, "_Instance", ReplayOnCpu)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: _Stream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())


@pytest.fixture
def splits(monkeypatch):
    """The BatchSplit of every graph compiled in the test, in order."""
    found = []
    real = batch_split.find_batch_split

    def spy(gm, static=()):
        found.append(real(gm, static))
        return found[-1]

    monkeypatch.setattr(batch_split, "find_batch_split", spy)
    return found


def run_sizes(fn, make, sizes, **options):
    """Compile ``fn`` once (``dynamic=True``) and call it at each batch size under no_grad,
    against eager; returns the one compiled graph's record."""
    torch._dynamo.reset()
    kitsune_backend.clear_history()
    compiled = torch.compile(fn, backend="kitsune", dynamic=True,
                             options={"strict": True, **options})
    with torch.no_grad():
        for n in sizes:
            inputs = make(n)
            assert_close(compiled(*inputs), fn(*inputs), f"batch size {n}")
    (session,) = [s for s in kitsune_backend.history() if s.records]  # one compile
    (record,) = session.records
    return record


def _reasons(record):
    return [d.reason for d in record.declines if d.stage == "batch_split"]


class Block(torch.nn.Module):
    """A transformer encoder block: attention over each sample's tokens, norms, an MLP."""

    def __init__(self, d=32, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv, self.out = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.norm1, self.norm2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d, 64), torch.nn.GELU(),
                                       torch.nn.Linear(64, d))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        x = self.norm1(x + self.out(attended))
        return self.norm2(x + self.mlp(x))


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8),
                               torch.nn.LayerNorm(8), torch.nn.Softmax(-1))


def test_a_pointwise_mlp_is_separable(splits):
    record = run_sizes(mlp(), lambda n: [torch.randn(n, 16)], [3, 5])
    (split,) = splits
    assert split.separable and split.symbol, split.reason
    assert len(split.size_inputs) == 1 and len(split.inputs) == 1
    assert [dim for _, dim in split.inputs] == [0] and [d for _, d in split.outputs] == [0]
    assert not _reasons(record)
    assert record.stats["batch_split"] == f"{split.symbol}: 1 input(s) padded, 1 output(s) sliced"


@pytest.mark.parametrize("fast_path", [False, True])
def test_a_transformer_encoder_block_is_separable(splits, fast_path):
    """Attention over each sample's tokens (views that split the features into heads,
    a permute that moves the batch to dim 1 and back) keeps samples apart; so does
    PyTorch's fused encoder layer (``_transformer_encoder_layer_fwd``, its no_grad fast
    path)."""
    torch.manual_seed(0)
    model = torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0).eval() \
        if fast_path else Block().eval()
    run_sizes(model, lambda n: [torch.randn(n, 6, 32)], [3, 5])
    (split,) = splits
    assert split.separable, split.reason


@pytest.mark.parametrize("fn, words", [
    (lambda x: x - x.sum(0), "works across the batch dim 0"),
    (lambda x: x.sum() * x, "works across the batch dim 0"),
    (lambda x: x * x.shape[0], "reads the batch size"),
    (lambda x: x.t() @ x, "contracts over the batch"),
    (lambda x: torch.cumsum(x, 0).relu(), "works across the batch dim 0"),
])
def test_ops_that_mix_rows_are_not_separable_and_say_which(splits, fn, words):
    record = run_sizes(fn, lambda n: [torch.randn(n, 4)], [3, 5])
    (split,) = splits
    assert not split.separable and words in split.reason, split.reason
    assert split.reason.startswith("node ") and "aten." in split.reason  # the node and op
    assert _reasons(record) == [f"batch not padded: {split.reason}"]


def test_batch_norm_in_training_is_not_separable(splits):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8)).train()
    record = run_sizes(model, lambda n: [torch.randn(n, 8)], [3, 5])
    (split,) = splits
    assert not split.separable
    assert "batch_norm" in split.reason and "across the batch" in split.reason, split.reason
    assert "batch_norm" in kitsune_backend.explain(record)


def test_a_loss_over_the_batch_is_not_separable(splits):
    model = mlp()
    run_sizes(lambda x, y: F.mse_loss(model(x), y), lambda n: [torch.randn(n, 16),
                                                               torch.randn(n, 8)], [3, 5])
    assert not splits[0].separable and "batch" in splits[0].reason


def test_batch_buckets_off_is_a_reason(splits):
    record = run_sizes(mlp(), lambda n: [torch.randn(n, 16)], [3, 5], batch_buckets="off")
    assert not splits and _reasons(record) == [
        "batch not padded: batch padding is off (batch_buckets='off')"]


@hypothesis.settings(max_examples=6, deadline=None,  # cpu_capture's patches hold for all
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(sizes=st.lists(st.integers(2, 40).filter(lambda n: n not in (6, 32)),
                                  min_size=4, max_size=10))
def test_padded_calls_equal_eager_and_share_captures_per_bucket(cpu_capture, sizes):
    """One compile; every batch size's result equals eager's; one signature per bucket,
    captured at its second call. (A first batch of 6 or 32 equals the sequence length or
    the width: Dynamo's duck sizing gives both dims one symbol, then recompiles.)"""
    torch.manual_seed(0)
    record = run_sizes(Block().eval(), lambda n: [torch.randn(n, 6, 32)], sizes)
    calls = collections.Counter(bucket(n) for n in sizes)
    info = record.runtime_info
    assert info["shape_signatures"] == len(calls)
    assert info.get("cuda_graph_captures", 0) == sum(1 for c in calls.values() if c > 1)
    assert info.get("padded_calls", 0) == sum(1 for n in sizes if bucket(n) != n)


def test_graphs_that_are_not_separable_are_captured_per_size_unpadded(cpu_capture):
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8)).train()
    sizes = [3, 3, 5, 5, 6]
    run_sizes(model, lambda n: [torch.randn(n, 8)], sizes)  # running stats: eager's copy
    record = kitsune_backend.last_compile().records[0]
    info = record.runtime_info
    assert info["shape_signatures"] == 3 and info["cuda_graph_captures"] == 2
    assert "padded_calls" not in info


def test_least_recently_used_signatures_are_dropped(cpu_capture):
    sizes = [2, 2, 4, 4, 8, 8, 2, 2, 2]
    record = run_sizes(mlp(), lambda n: [torch.randn(n, 16)], sizes, capture_shapes=2)
    info = record.runtime_info
    assert info["shape_signatures"] == 2 and info["shape_signatures_dropped"] == 2
    assert info["cuda_graph_captures"] == 4  # size 2 warmed up and captured again
    assert info["cuda_graph_instances"] == 2 and info["uncaptured_calls"] == 4


def test_shape_cache_keeps_the_most_recently_used():
    cache = ShapeCache(2)
    assert cache.add("a", 1) == [] and cache.add("b", 2) == []
    assert cache.get("a") == 1  # "b" is now the least recently used
    assert cache.add("c", 3) == [2] and cache.get("b") is None
    assert list(cache) == [1, 3] and cache.evicted == 1 and len(cache) == 2


def test_signature_holds_shapes_strides_and_ints():
    x = torch.randn(4, 3)
    assert signature([x, 7, x.t()], [0, 1, 2]) == (((4, 3), (3, 1)), 7, ((3, 4), (1, 3)))
    assert signature([x, 7], [1]) == (7,)


def test_bucket_is_the_next_power_of_two_within_the_guards():
    assert [bucket(n) for n in (2, 3, 4, 5, 33, 64)] == [2, 4, 4, 8, 64, 64]
    assert bucket(9, most=12) == 12 and bucket(5, most=12) == 8


def test_padder_pads_with_zeros_in_the_input_layout_and_slices_back():
    padder = BatchPadder(BatchSplit(symbol="s0", size_inputs=(0,), inputs=((1, 0), (2, 1)),
                                    outputs=((0, 0), (1, 1))))
    x, y = torch.randn(3, 4), torch.randn(3, 5).t()  # y: batch in dim 1, column-major
    n, padded = padder.batch([3, x, y])
    assert (n, padded) == (3, 4)
    size, px, py = padder.pad(padder.with_size([3, x, y], padded), n, padded)
    assert size == 4 and px.shape == (4, 4) and py.shape == (5, 4)
    assert py.stride(0) < py.stride(1)  # laid out as y is
    assert torch.equal(px[:3], x) and not px[3:].any() and torch.equal(py[:, :3], y)
    assert padder.key([4, x, y], [0, 1, 2], n, padded) == (4, (4, 4), (5, 4))
    a, b = padder.unpad((px * 2, py + 1), n, padded)
    assert torch.equal(a, x * 2) and torch.equal(b, y + 1)
