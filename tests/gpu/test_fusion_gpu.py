"""Fusion on CUDA: whole models end to end, CUDA graph capture of generated kernels, and
``max-autotune``. The op-family checks of ``tests/test_fusion_ops.py`` run on CUDA through
their ``cuda`` parameters (``-m gpu``)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import kitsune_backend
from kitsune_backend import models
from kitsune_backend.codegen.kernel import FusedKernel
from tests.test_codegen import fused
from tests.test_fusion_models import check_model, model_cases
from tests.test_fusion_ops import check, rand

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def no_tf32():
    """Full fp32 convolutions and matmuls, so eager and compiled differ only by fusion."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("name", ["MLP", "SmallCNN", "TransformerBlock", "BranchyHeads"])
def test_models_forward_backward_cuda(name):
    model, x = model_cases("cuda")[name]
    session = check_model(model, x, "cuda")
    assert sum(r.stats["fused_regions"] for r in session.records) > 0


def test_default_size_models_cuda():
    torch.manual_seed(0)
    for model, x in (
        (models.TransformerBlock(), torch.randn(4, 128, 64)),
        (models.BranchyHeads(), torch.randn(8, 512)),
        (models.ResNet18(), torch.randn(4, 3, 32, 32)),
    ):
        torch._dynamo.reset()
        session = check_model(model, x, "cuda", rtol=1e-3)
        assert session.forward.stats["fused_regions"] > 0


def test_kernels_replay_inside_a_cuda_graph():
    x = rand(64, 1000, device="cuda")
    gm, kernels = fused(lambda t: torch.softmax(t * 2, -1) + t.sigmoid(), x)
    assert kernels and all(isinstance(k, FusedKernel) for k in kernels)
    static_out = gm(x)  # warm-up: compiles every kernel
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = gm(x)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(static_out, torch.softmax(x * 2, -1) + x.sigmoid())


def test_large_rows_and_half_types_cuda():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = rand(64, 20000, device="cuda", dtype=dtype)  # long rows: looped kernel
        w, b = rand(20000, device="cuda", dtype=dtype), rand(20000, device="cuda", dtype=dtype)
        check(lambda t, w, b: F.layer_norm(t, (20000,), w, b), x, w, b)
        check(lambda t: torch.softmax(t, -1), x)


def test_max_autotune_picks_and_remembers_a_config(tmp_path):
    fn = torch.compile(lambda t: torch.softmax(t, -1) * 2, backend="kitsune",
                       options={"strict": True, "autotune": True, "cuda_graphs": False,
                                "kernel_cache_dir": str(tmp_path)})
    x = rand(512, 1024, device="cuda")
    torch.testing.assert_close(fn(x), torch.softmax(x, -1) * 2)
    assert os.path.exists(tmp_path / "autotune.json")
    assert kitsune_backend.last_compile().forward.stats["fused_regions"] == 1
