"""Fewer kernels on CUDA: the structure and correctness checks of
``tests/test_fusion_cat_sources.py`` on CUDA tensors, and the default-size branchy model
(its kernels counted by the profiler)."""

from __future__ import annotations

import pytest
import torch

import kitsune_backend
from kitsune_backend import models
from tests import test_fusion_cat_sources as cases
from tests.helpers import assert_close
from tests.test_fusion_ops import HALF_TYPES

pytestmark = pytest.mark.gpu


def test_branchy_small_cuda():
    cases.test_branchy_bias_adds_and_cat_are_one_kernel("cuda")


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cat_of_pointwise_results_cuda(dim):
    cases.test_cat_of_pointwise_results_is_one_kernel(dim, "cuda")


@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_cat_mixed_cuda(dtype):
    cases.test_cat_mixed_with_loads_and_consumers(dtype, "cuda")


def test_cat_parts_stored_cuda():
    cases.test_cat_value_also_stored_by_its_own_kernel("cuda")


def test_cat_int_bool_cuda():
    cases.test_cat_of_int_and_bool_values("cuda")


def test_where_of_scalar_tensors_cuda():
    cases.test_where_of_two_scalar_tensors_is_one_kernel("cuda")


@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_causal_mask_cuda(dtype):
    cases.test_causal_mask_into_masked_fill_is_one_kernel(dtype, "cuda")


@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_fill_ops_cuda(dtype):
    cases.test_fill_ops_fold_into_consumers(dtype, "cuda")


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.float32])
def test_arange_cuda(dtype):
    cases.test_arange_values(dtype, "cuda")


@pytest.mark.parametrize("dtype", [torch.bool, torch.int64, torch.int32, torch.uint8])
def test_bitwise_cuda(dtype):
    cases.test_bitwise_and_logical_ops(dtype, "cuda")


def test_broadcast_growth_cuda():
    cases.test_region_grows_to_a_broadcast_shape("cuda")


def test_gpt2_style_mask_cuda():
    cases.test_gpt2_style_mask_kernels("cuda")


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int64])
def test_gather_cuda(dtype):
    cases.test_gather_by_broadcast_index_tensors(dtype, "cuda")


def test_gpt2_mask_with_positions_cuda():
    cases.test_gpt2_mask_with_positions_is_one_kernel("cuda")


def test_gather_from_a_single_element_cuda():
    cases.test_gather_from_a_single_element("cuda")


def test_views_of_fills_cuda():
    cases.test_views_of_fills_are_computed_in_place("cuda")


def test_gather_from_a_computed_source_cuda():
    cases.test_gather_from_a_computed_source("cuda")
