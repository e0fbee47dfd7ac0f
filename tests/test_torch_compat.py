"""The Meta kernels kitsune gives older torch versions, against the real ops on CPU."""

import pytest
import torch

from kitsune_backend import torch_compat
from tests.helpers import encoder_layer_args

aten = torch.ops.aten


def _on_meta(values):
    return [v.to("meta") if isinstance(v, torch.Tensor) else v for v in values]


@pytest.mark.parametrize("batch", [0, 1, 5])
def test_encoder_layer_kernel_shapes_its_output_as_the_op_does(batch):
    layer = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True).eval()
    args = encoder_layer_args(layer, torch.randn(batch, 3, 16))
    with torch.no_grad():
        real = aten._transformer_encoder_layer_fwd(*args)
    meta = torch_compat.transformer_encoder_layer_fwd(*_on_meta(args))
    assert meta.device.type == "meta"
    assert (meta.shape, meta.dtype) == (real.shape, real.dtype)


@pytest.mark.parametrize("need_weights, average", [(True, True), (True, False), (False, True)])
def test_multi_head_attention_kernel_shapes_both_outputs_as_the_op_does(need_weights, average):
    attn = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    args = [x, x, x, 16, 4, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight,
            attn.out_proj.bias, None, need_weights, average]
    with torch.no_grad():
        real = aten._native_multi_head_attention(*args)
    meta = torch_compat.native_multi_head_attention(*_on_meta(args))
    assert (meta[0].shape, meta[0].dtype) == (real[0].shape, real[0].dtype)
    if need_weights:
        assert (meta[1].shape, meta[1].dtype) == (real[1].shape, real[1].dtype)
    else:  # the CPU kernel returns no tensor; torch's own Meta kernel an empty one
        assert real[1] is None and meta[1].numel() == 0


def test_install_registers_only_what_this_torch_lacks():
    """torch 2.13 has both kernels: nothing registered, and after the package's import no
    op of the table lacks one on any supported torch."""
    assert torch_compat.missing_meta_kernels() == []
    assert torch_compat.install() == []
