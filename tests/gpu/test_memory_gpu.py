"""GPU proof of the memory mechanisms: what a side stream's cuBLAS workspace costs, and the
stream budget that weighs it."""

from __future__ import annotations

import gc

import pytest
import torch

import kitsune_backend
from kitsune_backend.models import BranchyHeads
from kitsune_backend.passes.library_workspace import cublas_workspace_bytes
from tests.helpers import assert_close
from tests.helpers_gpu import DEV, compile_with

pytestmark = pytest.mark.gpu


def _reserved_by_captured_branchy(**options):
    """Bytes the caching allocator reserves for a captured 8-head model (its graph pool and
    arena), the forward's stats, and whether its output matched eager."""
    torch.manual_seed(0)
    model = BranchyHeads(512, 8, 512).to(DEV).eval()
    x = torch.randn(32, 512, device=DEV)
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()
    compiled = compile_with(model, **options)
    with torch.no_grad():
        for _ in range(3):
            out = compiled(x)
        assert_close(out, model(x))
    torch.cuda.synchronize()
    reserved = torch.cuda.memory_reserved() - before
    stats = kitsune_backend.last_compile().forward.stats
    del compiled, out
    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()
    return reserved, stats


def test_side_stream_matmuls_cost_a_workspace_each_and_the_budget_weighs_them():
    """Eight matmul heads: spread over streams, the captured graph holds a cuBLAS workspace
    per side stream; the default budget keeps them on one stream, and the memory measured
    differs by at least most of those workspaces."""
    workspace = cublas_workspace_bytes(torch.device(DEV))
    budgeted, kept = _reserved_by_captured_branchy()
    free, spread = _reserved_by_captured_branchy(stream_memory_budget=float("inf"))
    side = spread["side_stream_workspaces"]
    assert spread["streams_used"] > 1 and side >= 3
    assert kept["streams_used"] == 1 and kept["side_stream_workspaces"] == 0
    assert kept["side_stream_workspaces_unbudgeted"] == side
    print(f"reserved: 1 stream {budgeted / 2**20:.1f} MiB, {spread['streams_used']} streams "
          f"{free / 2**20:.1f} MiB, workspace {workspace / 2**20:.1f} MiB")
    assert free - budgeted >= (side - 2) * workspace
