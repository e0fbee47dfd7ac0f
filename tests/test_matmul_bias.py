"""A matmul and the bias add that fused with nothing, as one generated kernel.

On the CPU the kernel runs under ``TRITON_INTERPRET=1`` with ``matmul_kernels="always"``
("auto" never picks it off CUDA, where nothing can be timed); the ``cuda`` parameters run
the same checks on a GPU (``-m gpu``), where "always" picks the fastest tile by timing.
"""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kitsune_backend
from kitsune_backend.codegen.kernel import FusedKernel
from kitsune_backend.codegen.matmul import MatmulTile, matmul_bias_source
from kitsune_backend.codegen.source import TensorSpec
from kitsune_backend.errors import KitsuneConfigError
from kitsune_backend.ir import PassContext
from kitsune_backend.passes.matmul_bias import _choose, matmul_and_bias
from kitsune_backend.process import PROCESS
from tests.conftest import DEVICES
from tests.helpers import HALF_TYPES, check, rand
from tests.helpers_cases import _mm_bias_kernels, qkv

ALWAYS = {"matmul_kernels": "always"}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_lone_bias_add_and_its_matmul_are_one_kernel(device, dtype):
    if device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the interpreter's bf16 dot is wrong: declined, see the next test")
    args = rand(37, 24, device=device, dtype=dtype), rand(24, 48, device=device, dtype=dtype), \
        rand(48, device=device, dtype=dtype)
    session = check(qkv, *args, min_regions=0, options=ALWAYS)
    (kernel,) = _mm_bias_kernels(session)
    assert kernel.nodes == ["mm", "add"]
    assert session.forward.stats["matmul_bias_kernels"] == 1
    assert session.forward.stats["kernels"] == 1  # the views launch nothing


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m,k,n", [(1, 16, 16), (5, 3, 7), (70, 33, 129), (16, 0, 8), (0, 8, 16)])
def test_odd_sizes(device, m, k, n):
    check(qkv, rand(m, k, device=device), rand(k, 3 * n, device=device),
          rand(3 * n, device=device), min_regions=0, options=ALWAYS)


@pytest.mark.parametrize("device", DEVICES)
def test_transposed_weight_of_linear(device):
    """``F.linear`` hands the matmul the weight transposed: strides (1, K)."""
    def fn(x, w, b):
        return F.linear(x, w, b).view(x.shape[0], 2, w.shape[0] // 2).unbind(1)

    session = check(fn, rand(9, 20, device=device), rand(30, 20, device=device),
                    rand(30, device=device), min_regions=0, options=ALWAYS)
    (kernel,) = _mm_bias_kernels(session)
    assert "strides (1, 20)" in kernel.source


@pytest.mark.parametrize("device", DEVICES)
def test_training_step_matches_eager(device):
    args = rand(12, 16, device=device), rand(16, 24, device=device), rand(24, device=device)
    session = check(qkv, *args, grad=True, min_regions=0, options=ALWAYS)
    assert len(_mm_bias_kernels(session)) == 1


def test_identical_projections_share_one_kernel():
    def fn(x, w1, b1, w2, b2):
        return qkv(x, w1, b1) + qkv(x * 2, w2, b2)

    session = check(fn, rand(8, 16), rand(16, 24), rand(24), rand(16, 24), rand(24),
                    min_regions=0, options=ALWAYS)
    records = _mm_bias_kernels(session)
    assert len(records) == 2 and records[0].name == records[1].name
    assert records[0].nodes != records[1].nodes  # each region names its own FX nodes


def test_bias_add_that_fuses_stays_with_its_region():
    """Followed by a GELU, the add fuses into the GELU's kernel: nothing to fold."""
    session = check(lambda x, w, b: F.gelu(torch.addmm(b, x, w)), rand(8, 16), rand(16, 24),
                    rand(24), options=ALWAYS)
    assert _mm_bias_kernels(session) == []


def test_bf16_under_the_interpreter_keeps_the_add_with_a_reason():
    args = (rand(8, 16, dtype=torch.bfloat16), rand(16, 24, dtype=torch.bfloat16),
            rand(24, dtype=torch.bfloat16))
    session = check(qkv, *args, min_regions=0, options=ALWAYS)
    assert _mm_bias_kernels(session) == []
    assert any("interpreter" in d.reason for d in session.forward.declines)


def test_never_keeps_the_add_with_a_reason():
    session = check(qkv, rand(8, 16), rand(16, 24), rand(24), min_regions=0,
                    options={"matmul_kernels": "never"})
    assert _mm_bias_kernels(session) == []
    assert any("matmul_kernels='never'" in d.reason for d in session.forward.declines)


def test_auto_off_cuda_keeps_the_add_with_a_reason():
    session = check(qkv, rand(8, 16), rand(16, 24), rand(24), min_regions=0)
    assert _mm_bias_kernels(session) == []
    reasons = [d.reason for d in session.forward.declines if d.node == "add"]
    assert any("no CUDA device to time" in r for r in reasons), reasons


def test_auto_on_cuda_skips_matrix_vector_products_untimed():
    """A one-row matmul is declined before anything is compiled or timed (no GPU needed)."""
    specs = [TensorSpec(n, shape, stride, torch.float32) for n, shape, stride in (
        ("x", (1, 1024), (1024, 1)), ("w", (1024, 1000), (1000, 1)), ("b", (1000,), (1,)),
        ("add", (1, 1000), (1000, 1)))]
    ctx = PassContext(config=kitsune_backend.config.resolve(), graph_name="inference0",
                      example_inputs=())
    tile, why = _choose(specs, "ieee", torch.device("cuda"), ctx, "auto")
    assert tile is None and "matrix-vector" in why


def test_unknown_matmul_kernels_value_is_a_clear_error():
    with pytest.raises(KitsuneConfigError, match="matmul_kernels.*auto, always, never"):
        kitsune_backend.config.resolve(options={"matmul_kernels": "sometimes"})


def _graph(bias_shape, mm_users=1, dtype=torch.float32):
    """``add(mm(a, b), bias)`` with fake-free metadata, and the add node."""
    graph = fx.Graph()
    a, b, bias = (graph.placeholder(n) for n in ("a", "b", "bias"))
    mm = graph.call_function(torch.ops.aten.mm.default, (a, b))
    add = graph.call_function(torch.ops.aten.add.Tensor, (mm, bias))
    extra = [graph.call_function(torch.ops.aten.relu.default, (mm,)) for _ in range(mm_users - 1)]
    graph.output((add, *extra))
    values = {a: torch.empty(4, 3, dtype=dtype), b: torch.empty(3, 5, dtype=dtype),
              bias: torch.empty(bias_shape, dtype=dtype), mm: torch.empty(4, 5, dtype=dtype)}
    values[add] = torch.empty(4, 5, dtype=dtype)
    for node, value in values.items():
        node.meta["val"] = value
    return add, mm, bias


@pytest.mark.parametrize("bias_shape,mm_users,dtype,fits", [
    ((5,), 1, torch.float32, True),
    ((1, 5), 1, torch.bfloat16, True),
    ((4, 5), 1, torch.float32, False),   # not one value per column
    ((5,), 2, torch.float32, False),     # the product has another reader
    ((5,), 1, torch.float64, False),     # no generated matmul for fp64
])
def test_which_adds_fit(bias_shape, mm_users, dtype, fits):
    add, mm, bias = _graph(bias_shape, mm_users, dtype)
    assert (matmul_and_bias(add) == (mm, bias)) is fits


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(1, 40), k=st.integers(1, 40), n=st.integers(1, 40),
       transposed=st.booleans(), tile=st.sampled_from([MatmulTile(16, 16, 16, 1),
                                                        MatmulTile(32, 16, 32, 2),
                                                        MatmulTile(16, 64, 16, 4)]))
def test_generated_source_matches_eager_on_random_layouts(m, k, n, transposed, tile):
    """The kernel alone, on random sizes, strides and tiles, against ``a @ b + bias``."""
    a = torch.randn(m, k)
    b = torch.randn(n, k).t() if transposed else torch.randn(k, n)
    bias, out = torch.randn(n), torch.empty(m, n)
    specs = [TensorSpec(f"t{i}", tuple(t.shape), t.stride(), t.dtype)
             for i, t in enumerate((a, b, bias, out))]
    generated = matmul_bias_source(("mm", "add"), *specs, tile, "ieee")
    kernel = FusedKernel(generated, fx.Graph(), kitsune_backend.config.resolve().cache_dir,
                         PROCESS.kernel_cache)
    kernel(a, b, bias, out=(out,))
    torch.testing.assert_close(out, torch.addmm(bias, a, b), rtol=1e-5, atol=1e-4)
