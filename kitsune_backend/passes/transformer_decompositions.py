"""The fast-path transformer ops as the ops fusion knows (linear, attention, LayerNorm).

In eval mode under ``no_grad``, ``nn.TransformerEncoderLayer`` runs as one ATen op,
``aten._transformer_encoder_layer_fwd``, and ``nn.MultiheadAttention`` as
``aten._native_multi_head_attention``: library calls that no kernel can share work with, so
a compiled serving loop would run every LayerNorm, residual add, bias and activation of the
layer inside them, unfused. Here both become what the layer computes outside the fast
path, in ATen's order:

- attention: one ``linear`` for q, k and v (three when query, key and value differ), heads
  split, ``scaled_dot_product_attention``, heads merged, the output projection;
- the encoder layer: ``x = src + attention(norm1(src) if norm_first else src)``, then
  LayerNorm 1 after it when not ``norm_first``; ``x = x + ffn(norm2(x) if norm_first else
  x)`` with ``ffn = linear2(gelu-or-relu(linear1(.)))``, then LayerNorm 2 when not
  ``norm_first``. The GELU is the one the op computes on that device: on CUDA its first
  linear is cuBLASLt's GEMM with a GELU epilogue, the tanh approximation; on CPU the
  exact GELU.

With a mask, attention weights asked for, or nested tensors, the op is left alone
(``NotImplemented``): the fast path's mask types and weight averaging stay ATen's.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F


def _attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, embed_dim: int,
               num_heads: int, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor,
               proj_weight: torch.Tensor, proj_bias: torch.Tensor) -> torch.Tensor:
    """Multi-head attention of batch-first ``[B, T, E]`` inputs, no mask, no dropout."""
    if query is key and key is value:
        q, k, v = F.linear(query, qkv_weight, qkv_bias).chunk(3, dim=-1)
    else:
        weights, biases = qkv_weight.chunk(3), qkv_bias.chunk(3)
        q, k, v = (F.linear(x, w, b) for x, w, b in zip((query, key, value), weights, biases))
    head = embed_dim // num_heads

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], num_heads, head).transpose(1, 2)

    out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
    out = out.transpose(1, 2).reshape(query.shape[0], query.shape[1], embed_dim)
    return F.linear(out, proj_weight, proj_bias)


def native_multi_head_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, embed_dim: int,
    num_head: int, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor,
    proj_weight: torch.Tensor, proj_bias: torch.Tensor, mask: Optional[torch.Tensor] = None,
    need_weights: bool = True, average_attn_weights: bool = True,
    mask_type: Optional[int] = None,
) -> Any:
    """``aten._native_multi_head_attention`` without a mask and without weights: the
    attention output, and the empty weights tensor the op returns then."""
    if mask is not None or need_weights or any(t.is_nested for t in (query, key, value)):
        return NotImplemented
    out = _attention(query, key, value, embed_dim, num_head, qkv_weight, qkv_bias,
                     proj_weight, proj_bias)
    return out, query.new_empty(0)


def transformer_encoder_layer_fwd(
    src: torch.Tensor, embed_dim: int, num_heads: int, qkv_weight: torch.Tensor,
    qkv_bias: torch.Tensor, proj_weight: torch.Tensor, proj_bias: torch.Tensor,
    use_gelu: bool, norm_first: bool, eps: float, norm_weight_1: torch.Tensor,
    norm_bias_1: torch.Tensor, norm_weight_2: torch.Tensor, norm_bias_2: torch.Tensor,
    ffn_weight_1: torch.Tensor, ffn_bias_1: torch.Tensor, ffn_weight_2: torch.Tensor,
    ffn_bias_2: torch.Tensor, mask: Optional[torch.Tensor] = None,
    mask_type: Optional[int] = None,
) -> Any:
    """``aten._transformer_encoder_layer_fwd`` without a mask: one encoder layer."""
    if mask is not None or src.is_nested:
        return NotImplemented

    def norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (embed_dim,), weight, bias, eps)

    x = norm(src, norm_weight_1, norm_bias_1) if norm_first else src
    x = src + _attention(x, x, x, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight,
                         proj_bias)
    if not norm_first:
        x = norm(x, norm_weight_1, norm_bias_1)
    y = norm(x, norm_weight_2, norm_bias_2) if norm_first else x
    y = F.linear(y, ffn_weight_1, ffn_bias_1)
    if use_gelu:  # the approximation the op's own GEMM epilogue computes on this device
        y = F.gelu(y, approximate="tanh" if y.device.type == "cuda" else "none")
    else:
        y = F.relu(y)
    x = x + F.linear(y, ffn_weight_2, ffn_bias_2)
    return x if norm_first else norm(x, norm_weight_2, norm_bias_2)
