"""Shared test setup.

Without a CUDA device, generated Triton kernels run under the interpreter on CPU tensors:
``TRITON_INTERPRET=1`` must be set before triton is first imported, so it is set here.
Tests marked ``gpu`` need CUDA and are skipped without it; run them with ``-m gpu``.
"""

import os

import pytest

if os.environ.get("KITSUNE_TEST_GPU") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402  (after TRITON_INTERPRET)

import kitsune_backend  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu`` tests on a machine without CUDA, with the reason shown."""
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test starts with Dynamo's caches and kitsune's history empty."""
    torch._dynamo.reset()
    kitsune_backend.clear_history()
    yield
    torch._dynamo.reset()


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
"""Parametrise a test with ``@pytest.mark.parametrize("device", DEVICES)``: ``cuda`` runs
under ``-m gpu``."""


@pytest.fixture
def no_tf32():
    """Full fp32 convolutions and matmuls on CUDA, so eager and compiled differ only by
    fusion (cuDNN allows TF32 by default). Nothing changes on the CPU."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture
def registered():
    """``registered(fn, **kwargs)`` registers a plugin pass for this test only."""
    names = []

    def register(fn, **kwargs):
        plugin = kitsune_backend.register_pass(fn, **kwargs)
        names.append(plugin.name)
        return plugin

    yield register
    for name in names:
        kitsune_backend.unregister_pass(name)
