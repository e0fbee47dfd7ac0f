"""CUDA graphs for changing shapes, on the GPU: captures per signature, batch padding.

Run with ``KITSUNE_TEST_GPU=1 python -m pytest -m gpu tests/gpu/test_capture_shapes_gpu.py``.
"""

import copy
import random

import pytest
import torch

import kitsune_backend
from kitsune_backend.backend import kitsune
from kitsune_backend.runtime.batch_padding import bucket
from tests.helpers import assert_close
from tests.helpers_gpu import DEV, deterministic  # noqa: F401 (autouse)

pytestmark = pytest.mark.gpu


def _records():
    return [r for s in kitsune_backend.history() for r in s.records]


def _captures():
    """CUDA graphs captured so far, over every graph compiled since the history was cleared."""
    return sum(r.runtime_info.get("cuda_graph_captures", 0) for r in _records())


def _compile(model, dynamic=None, **options):
    return torch.compile(model, backend=kitsune, dynamic=dynamic,
                         options={"strict": True, **options})


def test_a_serving_loop_needs_few_captures_and_matches_eager():
    """The issue's serving loop: a 2-layer encoder (d_model 256, seq 32), batch sizes 1..64
    from a seeded RNG, 120 calls: at most 8 captures over every graph Dynamo compiled
    (one per bucket of the symbolic graph, one per specialised size), every output as
    eager's."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(256, 8, 1024, dropout=0.0, batch_first=True)
    model = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).to(DEV).eval()
    compiled = _compile(model)
    sizes = random.Random(0).choices(range(1, 65), k=120)
    with torch.no_grad():
        for n in sizes:
            x = torch.randn(n, 32, 256, device=DEV)
            assert_close(compiled(x), model(x), f"batch size {n}")
    assert _captures() <= 8, [r.runtime_info for r in _records()]
    padded = [r for r in _records() if r.runtime_info.get("padded_calls")]
    assert padded, [(r.runtime_info, [str(d) for d in r.declines if "batch" in d.reason])
                    for r in _records()]


def test_fast_path_transformer_ops_have_meta_kernels_on_this_torch():
    """Without them (torch before 2.13) the serving loop's symbolic recompile breaks the
    graph at each encoder layer: no padding, the layers run eagerly."""
    from kitsune_backend import torch_compat
    assert torch_compat.missing_meta_kernels() == []


def test_random_sizes_under_capture_one_signature_per_bucket():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(),
                                torch.nn.Linear(128, 64), torch.nn.LayerNorm(64)).to(DEV)
    compiled = _compile(model, dynamic=True)
    sizes = random.Random(1).choices(range(2, 100), k=40)
    with torch.no_grad():
        for n in sizes:
            x = torch.randn(n, 64, device=DEV)
            assert_close(compiled(x), model(x), f"batch size {n}")
    (record,) = _records()
    calls = {}
    for n in sizes:
        calls[bucket(n)] = calls.get(bucket(n), 0) + 1
    assert record.runtime_info["shape_signatures"] == len(calls)
    assert record.runtime_info["cuda_graph_captures"] == sum(c > 1 for c in calls.values())


def test_a_held_output_of_a_padded_call_is_not_overwritten():
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU()).to(DEV)
    compiled = _compile(model, dynamic=True)
    with torch.no_grad():
        xs = [torch.randn(n, 32, device=DEV) for n in (3, 3, 4, 3)]
        held = [compiled(x) for x in xs]  # all in bucket 4, each output still held
        for x, out in zip(xs, held):
            assert out.shape[0] == x.shape[0]
            assert_close(out, model(x))


def test_least_recently_used_signatures_are_dropped_and_freed():
    model = torch.nn.Linear(64, 64).to(DEV)
    compiled = _compile(model, dynamic=True, capture_shapes=2)
    with torch.no_grad():
        for _ in range(3):
            for n in (3, 7, 13, 30):  # buckets 4, 8, 16, 32: more than 2 signatures
                for _ in range(2):
                    x = torch.randn(n, 64, device=DEV)
                    assert_close(compiled(x), model(x))
    (record,) = _records()
    info = record.runtime_info
    assert info["shape_signatures"] == 2 and info["cuda_graph_instances"] <= 2
    assert info["shape_signatures_dropped"] >= 10


def test_batch_norm_in_training_is_captured_per_size_unpadded():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.BatchNorm1d(16)).to(DEV)
    reference = copy.deepcopy(model)
    compiled = _compile(model, dynamic=True)
    with torch.no_grad():
        for n in (3, 3, 3, 5, 5, 5):
            x = torch.randn(n, 16, device=DEV)
            assert_close(compiled(x), reference(x), f"batch size {n}")
    assert_close(model[1].running_mean, reference[1].running_mean)
    (record,) = _records()
    reasons = [d.reason for d in record.declines if d.stage == "batch_split"]
    assert reasons and "batch_norm" in reasons[0], reasons
    assert "padded_calls" not in record.runtime_info
    assert record.runtime_info["cuda_graph_captures"] == 2  # one per size
