"""The generated matmul-plus-bias kernel on CUDA: the ``auto`` decision, timed on the device,
and GPT-2's attention block end to end. The checks of ``tests/test_matmul_bias.py`` run on
CUDA through their ``cuda`` parameters."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import check, rand
from tests.helpers_cases import _mm_bias_kernels, qkv

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def highest_fp32_precision():
    """Full fp32 matmuls (the ``ieee`` dot), as PyTorch's default."""
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(saved)


@pytest.mark.parametrize("k,n", [(768, 2304), (3072, 768)])
def test_auto_decides_by_timing_and_says_so(k, n):
    """GPT-2's QKV (768 -> 2304) and MLP-out (3072 -> 768) shapes at 128 tokens: whichever
    way ``auto`` decides, the record shows both timings."""
    args = rand(128, k, device="cuda"), rand(k, n, device="cuda") / k ** 0.5, rand(n, device="cuda")
    session = check(qkv, *args, min_regions=0)
    notes = [n for p in session.forward.passes for n in p.notes]
    said = [*notes, *(d.reason for d in session.forward.declines)]
    timed = [s for s in said if "cuBLAS mm + add" in s and " us" in s]
    assert timed, said
    assert bool(_mm_bias_kernels(session)) == any("one generated kernel" in s for s in timed)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_tensor_cores(dtype):
    args = (rand(128, 256, device="cuda", dtype=dtype), rand(256, 768, device="cuda", dtype=dtype),
            rand(768, device="cuda", dtype=dtype))
    session = check(qkv, *args, min_regions=0, options={"matmul_kernels": "always"})
    (kernel,) = _mm_bias_kernels(session)
    assert 'input_precision="tf32"' in kernel.source  # ignored for fp16/bf16 operands


def test_tf32_allowed_gives_a_tf32_dot():
    torch.set_float32_matmul_precision("high")
    args = rand(64, 128, device="cuda"), rand(128, 192, device="cuda"), rand(192, device="cuda")
    compiled = torch.compile(qkv, backend="kitsune", options={"matmul_kernels": "always"})
    for got, want in zip(compiled(*args), qkv(*args)):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)  # TF32 on both sides
    import kitsune_backend
    (kernel,) = _mm_bias_kernels(kitsune_backend.last_compile())
    assert 'input_precision="tf32"' in kernel.source
