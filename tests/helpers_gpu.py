"""GPU-only test helpers: the CUDA device, deterministic libraries, compiling with a fresh
Dynamo. Bitwise comparisons need deterministic cuBLAS: ``CUBLAS_WORKSPACE_CONFIG`` is set
when this module is imported (at collection), before CUDA starts."""

import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pytest  # noqa: E402
import torch  # noqa: E402

import kitsune_backend  # noqa: E402
from kitsune_backend.backend import kitsune  # noqa: E402

DEV = "cuda"


@pytest.fixture(autouse=True)
def deterministic():
    """Deterministic cuDNN, TF32 off (autouse where imported: the bitwise comparisons)."""
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield


def compile_with(model, **options):
    """``torch.compile`` with kitsune (the backend by object: the "kitsune" name needs the
    package installed) after a Dynamo reset, with kitsune's history cleared."""
    torch._dynamo.reset()
    kitsune_backend.clear_history()
    return torch.compile(model, backend=kitsune, options=options)
