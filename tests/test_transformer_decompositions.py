"""The fast-path transformer ops decomposed: against the ops themselves on CPU, left alone
where the decomposition does not apply, and fused when a compiled encoder serves."""

import pytest
import torch

import kitsune_backend
from kitsune_backend.passes import transformer_decompositions as td
from tests.helpers import assert_close, encoder_layer_args

aten = torch.ops.aten


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_the_encoder_layer_equals_the_op(norm_first, activation):
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True,
                                             norm_first=norm_first, activation=activation)
    args = encoder_layer_args(layer.eval(), torch.randn(3, 5, 32), activation == "gelu")
    with torch.no_grad():
        expected = aten._transformer_encoder_layer_fwd(*args)
        assert_close(td.transformer_encoder_layer_fwd(*args), expected)


@pytest.mark.parametrize("cross", [False, True])
def test_attention_equals_the_op(cross):
    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    q = torch.randn(2, 5, 16)
    k, v = (torch.randn(2, 5, 16), torch.randn(2, 5, 16)) if cross else (q, q)
    args = [q, k, v, 16, 4, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight,
            attn.out_proj.bias, None, False]
    with torch.no_grad():
        expected, _ = aten._native_multi_head_attention(*args)
        actual, weights = td.native_multi_head_attention(*args)
    assert_close(actual, expected)
    assert weights.numel() == 0


def test_masks_weights_and_nested_tensors_keep_the_op():
    attn = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    x = torch.randn(2, 5, 16)
    common = [x, x, x, 16, 4, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight,
              attn.out_proj.bias]
    assert td.native_multi_head_attention(*common, None, True) is NotImplemented
    mask = torch.zeros(5, 5, dtype=torch.bool)
    assert td.native_multi_head_attention(*common, mask, False) is NotImplemented
    layer = torch.nn.TransformerEncoderLayer(16, 4, 32, batch_first=True)
    args = encoder_layer_args(layer, x, False)
    assert td.transformer_encoder_layer_fwd(*args, mask) is NotImplemented


def _encoder():
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    return torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()


def test_a_served_encoder_is_fused_not_one_library_call_per_layer():
    """In eval under no_grad each layer is one fast-path op; compiled, its LayerNorms,
    residual adds, biases and activations become generated kernels."""
    model = _encoder()
    compiled = torch.compile(model, backend="kitsune", options={"strict": True})
    with torch.no_grad():
        x = torch.randn(3, 5, 32)
        assert_close(compiled(x), model(x))
    record = kitsune_backend.last_compile().forward
    assert "_transformer_encoder_layer_fwd" not in record.input_code
    norms = [k for k in record.kernels if any(n.startswith("sum") for n in k.nodes)]
    assert len(norms) == 4  # two LayerNorms per layer, each with its residual add
    assert all(any(n.startswith("add") for n in k.nodes) for k in norms)
    assert all(not d.reason.startswith("not fused: _transformer") for d in record.declines)


def test_a_served_encoder_at_changing_batch_sizes_compiles_once_and_matches_eager():
    model = _encoder()
    compiled = torch.compile(model, backend="kitsune", dynamic=True,
                             options={"strict": True})
    with torch.no_grad():
        for n in (3, 9, 4, 17):
            x = torch.randn(n, 5, 32)
            assert_close(compiled(x), model(x), f"batch size {n}")
    records = [r for s in kitsune_backend.history() for r in s.records]
    assert len(records) == 1 and records[0].kernels
