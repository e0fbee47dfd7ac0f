"""PyTorch's OpInfo samples, each op fused between neighbours, through kitsune against eager
(float32 on the CPU under ``TRITON_INTERPRET=1``, with the memory pool on; float16 and
bfloat16 on CUDA). See :mod:`tests.opinfo_sweep` for how a case is built and judged."""

from __future__ import annotations

import pytest
import torch

from tests import opinfo_sweep

SHARDS = 6
GPU_SHARDS = 8  # run over several processes: benchmarks/gpu_check.sh PHASE=sweep


def _check(report: opinfo_sweep.Report, record_property) -> None:
    for key in ("run", "fused"):  # in --junitxml: what benchmarks/gpu_check.sh sums up
        record_property(key, getattr(report, key))
    record_property("excused", " ".join(report.excused))
    assert report.run > 0, "the shard ran no case"
    assert not report.failures, "\n".join(
        f"{case}: {why}" for case, why in sorted(report.failures.items()))


@pytest.mark.parametrize("requires_grad", [False, True], ids=["forward", "gradients"])
@pytest.mark.parametrize("shard", range(SHARDS))
def test_opinfo_samples_fused_match_eager(shard, requires_grad, record_property):
    report = opinfo_sweep.sweep("cpu", torch.float32, requires_grad, shard, SHARDS)
    _check(report, record_property)
    # with the neighbours, the op itself is inside a generated kernel in 24-62% of a
    # shard's cases (alone, about one in eight): a shard far below that fuses nothing
    assert report.fused >= 0.15 * report.run, (report.fused, report.run)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("requires_grad", [False, True], ids=["forward", "gradients"])
@pytest.mark.parametrize("shard", range(GPU_SHARDS))
def test_opinfo_samples_fused_match_eager_gpu(shard, requires_grad, dtype, record_property):
    # PyTorch's OpInfo database needs expecttest, which the GPU machine lacks: carry its
    # wheel (benchmarks/README.md, PHASE=sweep)
    pytest.importorskip("expecttest")
    _check(opinfo_sweep.sweep("cuda", dtype, requires_grad, shard, GPU_SHARDS), record_property)


@pytest.mark.parametrize("name", ["masked.std", "masked.var"])
def test_masked_std_and_var_with_gradients_run_in_kernels(name):
    """With gradients, these samples once made a generated kernel raise ``Cannot broadcast,
    rank mismatch: ['1'], [1, 128]`` at run time, under the interpreter; both samples must
    match eager with every kernel launched (none fell back to its ATen ops)."""
    import kitsune_backend

    (op,) = [op for op in opinfo_sweep.swept_ops("cpu", torch.float32) if op.name == name]
    cases = opinfo_sweep.samples(op, "cpu", torch.float32, requires_grad=True)
    assert len(cases) == opinfo_sweep.SAMPLES_PER_OP
    for sample in cases:
        kitsune_backend.clear_history()
        assert opinfo_sweep.compare(op, sample, "kitsune") == ""
        (session,) = kitsune_backend.history()
        assert [r.name for r in session.records] == ["forward", "backward"]
        kernels = [k for r in session.records for k in r.kernels]
        assert any("sum" in n for k in kernels for n in k.nodes)  # the reductions fused
        assert all(k.compile_error == "" and k.kernel.fallback_calls == 0 for k in kernels)
