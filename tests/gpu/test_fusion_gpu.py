"""Fusion on CUDA only: default-size models end to end, CUDA graph capture of generated
kernels, long rows, ``max-autotune``, and the kernels one call launches (counted by the
profiler). The op-family checks of ``tests/test_fusion_ops.py``, ``test_fusion_cat_sources.py``
and the small models of ``test_fusion_models.py`` run on CUDA through their ``cuda``
parameters (``-m gpu``)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import kitsune_backend
from kitsune_backend import models
from kitsune_backend.codegen.kernel import FusedKernel
from tests.helpers import assert_close, check, check_model, rand
from tests.helpers_graphs import fused

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("no_tf32")]


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


def test_default_branchy_launches_one_kernel_per_head_and_one_for_the_cat():
    """BranchyHeads() at batch 32: 8 layer-norm kernels and 1 bias-add + cat kernel per
    call, besides the 16 matmuls (the evidence run had 8 more adds and an ATen cat)."""
    torch.manual_seed(0)
    model = models.BranchyHeads().cuda().eval()
    x = torch.randn(32, 512, device="cuda")
    with torch.no_grad():
        compiled = torch.compile(model, backend="kitsune", options={"strict": True})
        for _ in range(3):  # warm-up and capture
            compiled(x)
        assert_close(compiled(x), model(x))
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            compiled(x)
            torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    fused = [n for n in names if n.startswith("kitsune_fused")]
    assert len(fused) == 9, sorted(set(names))
    assert not any("CatArrayBatchedCopy" in n or "CUDAFunctor_add" in n for n in names), names
    record = kitsune_backend.last_compile().forward
    assert sum(k.name.startswith("kitsune_fused_add_cat") for k in record.kernels) == 1
