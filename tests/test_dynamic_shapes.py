"""Symbolic sizes: one compile, kernels that take the sizes as arguments, for every size.

Each example compiles once with symbolic sizes (``dynamic=True`` or ``mark_dynamic``),
then calls with several sizes: every result must equal eager's, Dynamo must hand kitsune
exactly one graph, and the graph's kernels must have launched for every call (no ATen
fallback, no decline about symbolic sizes for the regions that are supported).
"""

import hypothesis
import hypothesis.strategies as st
import pytest
import torch
import torch.nn.functional as F

import kitsune_backend
from kitsune_backend.codegen.lowering import same_kernel_key
from kitsune_backend.passes.fusion import DYNAMIC_SHAPES

from .helpers import assert_close
from .helpers_programs import assert_close_or_as_accurate, programs, run_program, second_input

SIZES = st.lists(st.integers(2, 70), min_size=3, max_size=4, unique=True)
SETTINGS = hypothesis.settings(max_examples=8, deadline=None)


def _fresh() -> None:
    torch._dynamo.reset()
    kitsune_backend.clear_history()


def run_sizes(fn, make_inputs, sizes, dynamic_dims=None):
    """Compile ``fn`` once (``dynamic=True``, or ``mark_dynamic`` of ``dynamic_dims``:
    input position -> dims), call it at each size, compare with eager; returns the one
    graph's record."""
    _fresh()
    compiled = torch.compile(fn, backend="kitsune", options={"strict": True},
                             dynamic=None if dynamic_dims else True)
    for n in sizes:
        inputs = make_inputs(n)
        for position, dims in (dynamic_dims or {}).items():
            for dim in dims:
                torch._dynamo.mark_dynamic(inputs[position], dim)
        assert_close(compiled(*inputs), fn(*inputs), f"size {n}")
    sessions = kitsune_backend.history()
    assert len(sessions) == 1, f"{len(sessions)} compiles for sizes {sizes}"
    (record,) = sessions[0].records
    return record


def assert_kernels_ran(record, calls):
    """The record's graph has symbolic kernels, each launched at every call."""
    assert record.kernels, [str(d) for d in record.declines]
    assert not [d for d in record.declines if d.reason.startswith(DYNAMIC_SHAPES)]
    for entry in record.kernels:
        kernel = entry.kernel
        assert kernel.generated.symbols, kernel.source  # sizes are kernel arguments
        assert kernel.launched and kernel.fallback_calls == 0, kernel.last_fallback_reason
        assert all(f"{s}" in kernel.source.split("@triton.jit")[1].splitlines()[1]
                   for s in kernel.generated.symbols)
    assert calls > 1


@SETTINGS
@hypothesis.given(sizes=SIZES)
def test_pointwise_chain_serves_every_size(sizes):
    def fn(x):
        return torch.sigmoid(torch.relu(x * 3 - 1) + x.exp()) / 2

    record = run_sizes(fn, lambda n: [torch.randn(n, n % 7 + 2)], sizes)
    assert_kernels_ran(record, len(sizes))
    assert record.stats["fused_regions"] == 1


@SETTINGS
@hypothesis.given(sizes=SIZES, last=st.integers(71, 90))  # no size equal to another
def test_broadcast_bias_add_with_both_dims_symbolic(sizes, last):
    def fn(x, w, b):
        return F.gelu(x * w + b).tanh()

    record = run_sizes(fn, lambda n: [torch.randn(n, last + n % 3), torch.randn(last + n % 3),
                                      torch.randn(1, last + n % 3)], sizes)
    assert_kernels_ran(record, len(sizes))


@SETTINGS
@hypothesis.given(sizes=SIZES)
def test_softmax_and_layer_norm_over_a_static_row(sizes):
    def fn(x, w):
        return torch.softmax(x * 2, -1), F.layer_norm(x, (24,), w, None)

    record = run_sizes(fn, lambda n: [torch.randn(n, 3, 24), torch.randn(24)], sizes,
                       dynamic_dims={0: [0]})
    assert_kernels_ran(record, len(sizes))
    assert all(k.kernel.generated.columns == 24 for k in record.kernels)  # a static row


@SETTINGS
@hypothesis.given(sizes=SIZES)
def test_reduction_over_a_symbolic_row_loops(sizes):
    def fn(x):
        return torch.softmax(x, -1), x.sum(-1, keepdim=True) * x.amax(-1, keepdim=True)

    record = run_sizes(fn, lambda n: [torch.randn(5, 3 * n + 1)], sizes)
    assert_kernels_ran(record, len(sizes))
    assert any("while roff <" in k.source for k in record.kernels)


@hypothesis.settings(max_examples=5, deadline=None)
@hypothesis.given(shapes=st.lists(  # disjoint ranges: no two dims share a symbol
    st.tuples(st.integers(2, 4), st.integers(5, 8), st.integers(9, 13)),
    min_size=3, max_size=3, unique=True))
def test_reductions_over_other_symbolic_dims(shapes):
    def fn(x, y):
        centred = (x - x.mean((0, 2), keepdim=True)) * y
        return centred, x.sum(0) * 2, torch.var_mean(x, 1)

    record = run_sizes(fn, lambda s: [torch.randn(*s), torch.randn(s[1], 1)], shapes)
    assert_kernels_ran(record, len(shapes))
    assert len(record.kernels) == 3


def test_one_generated_source_for_every_size():
    def fn(x):
        return (x + 1).relu() * x

    _fresh()
    compiled = torch.compile(fn, backend="kitsune", dynamic=True, options={"strict": True})
    x = torch.randn(5)
    assert_close(compiled(x), fn(x))
    (entry,) = kitsune_backend.last_compile().records[0].kernels
    kernel, generated = entry.kernel, entry.kernel.generated
    assert "xmask = xindex < s" in generated.source
    for n in (17, 3000, 33):  # new sizes: no recompile, no new source; 3000 takes 3 blocks
        x = torch.randn(n)
        assert_close(compiled(x), fn(x))
    assert len(kitsune_backend.history()) == 1
    assert kernel.generated is generated and kernel.fallback_calls == 0
    assert kernel.at_call([torch.empty(3000), 3000]).grid == 3  # cdiv(3000, 1024)


def test_unsupported_ops_decline_with_their_reason_while_the_rest_fuses():
    def fn(x):
        positions = torch.arange(x.shape[-1])  # a source of symbolic size: an ATen op
        picked = x[torch.arange(2) * 2]  # a gather from a value of symbolic size
        return (x + positions).relu() * 2, picked.exp() + 1

    _fresh()
    compiled = torch.compile(fn, backend="kitsune", dynamic=True, options={"strict": True})
    for n in (8, 9, 13):
        x = torch.randn(4, n)
        assert_close(compiled(x), fn(x))
    (session,) = kitsune_backend.history()
    record = session.records[0]
    reasons = {d.node: d.reason for d in record.declines if d.reason.startswith(DYNAMIC_SHAPES)}
    assert set(reasons) == {"arange", "index"}, reasons
    assert "a source of symbolic size" in reasons["arange"]
    assert "index.Tensor with symbolic sizes" in reasons["index"]
    assert sorted(len(entry.nodes) for entry in record.kernels) == [2, 3]  # the rest fuses
    assert all(entry.kernel.fallback_calls == 0 for entry in record.kernels)


@SETTINGS
@hypothesis.given(sizes=SIZES)
def test_cats_of_parts_of_symbolic_sizes(sizes):
    def fn(x, y):
        rows = torch.cat([x.exp(), y, x * 2], 0).sigmoid()
        columns = torch.cat([x.t(), (y * 3).t()], 1) + 1
        return rows, columns

    record = run_sizes(fn, lambda n: [torch.randn(n, 71), torch.randn(n + 72, 71)], sizes)
    assert_kernels_ran(record, len(sizes))
    fused = {name for entry in record.kernels for name in entry.nodes}
    assert {"cat", "cat_1"} <= fused, fused


@SETTINGS
@hypothesis.given(sizes=SIZES)
def test_symbolic_strides_of_a_transposed_input(sizes):
    def fn(x, y):
        return (x * 2).exp() + y

    record = run_sizes(fn, lambda n: [torch.randn(n, 71).t(), torch.randn(71, 1)], sizes)
    assert_kernels_ran(record, len(sizes))
    (entry,) = record.kernels
    assert entry.kernel.generated.inputs[0].stride[0] == 1  # strides (1, s): read as such


def test_static_then_symbolic_recompile_keeps_the_kernels_apart():
    def fn(x):
        return torch.relu(x * 2) + 1

    _fresh()
    compiled = torch.compile(fn, backend="kitsune", options={"strict": True})
    for n in (6, 7, 8, 40):  # the second size recompiles with a symbolic size, once
        x = torch.randn(n, 3)
        assert_close(compiled(x), fn(x))
    static, symbolic = [s.records[0] for s in kitsune_backend.history()]
    (a,), (b,) = static.kernels, symbolic.kernels
    assert not a.kernel.generated.symbols and b.kernel.generated.symbols
    assert same_kernel_key(a.kernel.generated) != same_kernel_key(b.kernel.generated)
    assert b.kernel.fallback_calls == 0 and b.kernel.launched


def test_later_stages_still_decline_and_the_graph_runs():
    def fn(x):
        return torch.softmax(x.relu(), -1)

    record = run_sizes(fn, lambda n: [torch.randn(n, 10)], [3, 11])
    stages = {d.stage: d.reason for d in record.declines}
    assert stages["memory_plan"] == "symbolic shapes: sizes unknown"
    assert_kernels_ran(record, 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.int64])
def test_dtypes_and_integer_sizes(dtype):
    def fn(x):
        return (x * 2 + 3) * x

    record = run_sizes(fn, lambda n: [(torch.randn(n, 5) * 10).to(dtype)], [4, 9, 21])
    assert_kernels_ran(record, 3)


def test_training_graphs_of_symbolic_sizes():
    def fn(x, w, b):
        return (F.gelu(x @ w + b) * x.sigmoid()).sum()

    _fresh()
    w0, b0 = torch.randn(6, 6), torch.randn(6)
    compiled = torch.compile(fn, backend="kitsune", dynamic=True, options={"strict": True})
    for n in (3, 10, 17):
        x0 = torch.randn(n, 6)
        got = [t.clone().requires_grad_() for t in (x0, w0, b0)]
        want = [t.clone().requires_grad_() for t in (x0, w0, b0)]
        compiled(*got).backward()
        fn(*want).backward()
        assert_close([t.grad for t in got], [t.grad for t in want], f"size {n}")
    (session,) = kitsune_backend.history()
    for record in (session.forward, session.backward):
        assert_kernels_ran(record, 3)


def test_sizes_that_depend_on_data_decline_with_their_reason():
    def fn(x):
        picked = x[x > 0]  # its length is known only once the mask is computed
        return (picked * 2).exp() + 1, (x * 2).relu() + 1

    _fresh()
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        compiled = torch.compile(fn, backend="kitsune", options={"strict": True})
        x = torch.randn(20)
        assert_close(compiled(x), fn(x))
    record = kitsune_backend.last_compile().records[0]
    reasons = {d.node: d.reason for d in record.declines}
    assert reasons["exp"].startswith(f"{DYNAMIC_SHAPES}: not fused: exp: size u")
    (entry,) = record.kernels  # the static region still fuses
    assert "relu" in entry.nodes and entry.kernel.launched


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(program=programs(), grow=st.lists(st.integers(0, 9), min_size=2, max_size=2))
def test_random_programs_serve_every_size(program, grow):
    """The random pointwise/reduction/cat programs of the static fuzz test, compiled once
    with symbolic sizes and run at three sizes (rows and columns never equal, never 1)."""
    steps, rows, _, dtype, layout, seed = program
    sizes = [(rows + 1 + k, rows + 12 + 2 * k) for k in (0, *grow)]
    hypothesis.assume(len(set(sizes)) == 3)
    _fresh()
    generator = torch.Generator().manual_seed(seed)  # the data is part of the example
    compiled = torch.compile(lambda a, b: run_program(steps, a, b), backend="kitsune",
                             options={"strict": True}, dynamic=True)
    for r, c in sizes:
        x = torch.randn(r, c, generator=generator).to(dtype)
        y = second_input(r, c, dtype, layout, generator)
        assert_close_or_as_accurate(compiled(x, y), run_program(steps, x, y),
                                    run_program(steps, x.double(), y.double()), dtype)
    (session,) = kitsune_backend.history()
    assert all(e.kernel.fallback_calls == 0 for e in session.records[0].kernels)
