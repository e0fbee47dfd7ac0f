"""Compiling generated kernels ahead on worker processes, on CUDA: every kernel of a training
step is compiled by a worker during the compile, and the first real launch of each one
loads the worker's binary from Triton's disk cache instead of compiling it."""

from __future__ import annotations

import copy

import pytest
import torch
from triton import knobs

import kitsune_backend
from kitsune_backend import models
from kitsune_backend.codegen import cache, precompile
from kitsune_backend.process import PROCESS
from tests.helpers import assert_close

pytestmark = pytest.mark.gpu


@pytest.fixture
def fresh_caches(tmp_path, monkeypatch):
    """Empty kitsune and Triton caches, and no kernel module imported yet, as in a new
    process; the kitsune cache folder."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    monkeypatch.setattr(PROCESS, "kernel_cache", cache.KernelCache())
    return str(tmp_path / "kitsune")


@pytest.fixture
def launch_compiles():
    """(kernel name, cache hit) for every Triton compile in this process while the test runs."""
    seen: list[tuple[str, bool]] = []
    previous = knobs.compilation.listener
    knobs.compilation.listener = lambda **kw: seen.append((kw["src"].name, kw["cache_hit"]))
    yield seen
    knobs.compilation.listener = previous


class TwoWidths(torch.nn.Module):
    """Two heads of different widths: their kernels differ (identical heads would share
    one kernel), in the forward and in the backward graph."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Sequential(torch.nn.Linear(48, 40), torch.nn.GELU(), torch.nn.LayerNorm(40))
        self.b = torch.nn.Sequential(torch.nn.Linear(48, 24), torch.nn.GELU(), torch.nn.LayerNorm(24))

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], -1)


def test_training_step_kernels_are_compiled_by_the_workers(fresh_caches, launch_compiles,
                                                          monkeypatch):
    # this small model's graphs have fewer kernels than workers need to pay: use them anyway
    monkeypatch.setattr(precompile, "MIN_KERNELS_FOR_WORKERS", 1)
    torch.manual_seed(0)
    model = TwoWidths().cuda()
    twin = copy.deepcopy(model)
    x = torch.randn(6, 48, device="cuda")
    compiled = torch.compile(twin, backend="kitsune", options={
        "compile_workers": 4, "kernel_cache_dir": fresh_caches, "strict": True})

    out, ref = compiled(x), model(x)
    weight = torch.randn_like(ref)
    (out * weight).sum().backward()
    (ref * weight).sum().backward()
    torch.cuda.synchronize()

    assert_close(out, ref)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-4)
    session = kitsune_backend.last_compile()
    precompiled = 0
    for record in session.records:
        stats = record.stats
        assert not record.fallback_reason, record.name
        assert stats["precompile_failures"] == 0, [str(d) for d in record.declines]
        assert stats["kernels_already_compiled"] == 0, record.name
        distinct = stats["fused_regions"] - stats["kernels_shared"]
        assert stats["kernels_precompiled"] == distinct >= 2, (record.name, stats)
        fusion_notes = [p.notes for p in record.passes if p.name == "precompile"]
        assert stats["launchers_prebuilt"] == stats["kernels_precompiled"], fusion_notes
        assert stats["precompile_workers"] == min(4, stats["kernels_precompiled"])
        precompiled += stats["kernels_precompiled"]
    ours = [(name, hit) for name, hit in launch_compiles if name.startswith("kitsune_fused")]
    assert len(ours) == precompiled  # each kernel loaded once at its first launch ...
    assert all(hit for _, hit in ours), ours  # ... from the workers' binaries, not compiled


def test_second_compile_finds_everything_compiled(fresh_caches):
    x = torch.randn(5, 24, device="cuda")
    options = {"compile_workers": 2, "kernel_cache_dir": fresh_caches}
    for _ in range(2):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = models.BranchyHeads(dim=24, heads=2, hidden=24).cuda().eval()
        with torch.no_grad():
            assert_close(torch.compile(model, backend="kitsune", options=options)(x), model(x))
    stats = kitsune_backend.last_compile().forward.stats
    assert stats["kernels_precompiled"] == 0 and stats["precompile_failures"] == 0
    distinct = stats["fused_regions"] - stats["kernels_shared"]
    assert stats["kernels_already_compiled"] == distinct >= 1


def test_a_small_compile_starts_no_worker(fresh_caches):
    before = PROCESS.compile_pool.size
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.GELU()).cuda()
    x = torch.randn(3, 2, device="cuda")
    out = torch.compile(model, backend="kitsune",
                        options={"compile_workers": 8, "kernel_cache_dir": fresh_caches})(x)
    out.sum().backward()
    assert_close(out, model(x))
    for record in kitsune_backend.last_compile().records:
        assert record.stats.get("precompile_workers", 0) == 0, record.name
    assert PROCESS.compile_pool.size == before
