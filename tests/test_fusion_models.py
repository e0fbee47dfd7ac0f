"""Whole models through kitsune with fusion on: forward and backward against eager, on the
CPU (kernels under the Triton interpreter) and, with ``-m gpu``, on CUDA."""

from __future__ import annotations

import pytest

from tests.conftest import DEVICES
from tests.helpers import check_model, model_cases


@pytest.mark.usefixtures("no_tf32")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["MLP", "SmallCNN", "TransformerBlock", "BranchyHeads"])
def test_models_forward_backward(name, device):
    model, x = model_cases(device)[name]
    session = check_model(model, x, device)
    assert sum(r.stats["fused_regions"] for r in session.records) > 0
    if name != "MLP":  # the MLP forward is linear + relu: nothing to fuse
        assert session.forward.stats["fused_regions"] > 0
