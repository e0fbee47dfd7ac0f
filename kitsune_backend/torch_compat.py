"""Fake-tensor kernels that the older torch versions kitsune supports lack.

In eval mode under ``no_grad``, ``nn.TransformerEncoderLayer`` and ``nn.MultiheadAttention``
take fast paths: one ATen op per layer (``aten._transformer_encoder_layer_fwd``,
``aten._native_multi_head_attention``). Before torch 2.13 (pytorch/pytorch#183916) neither
op has a Meta kernel, so fake tensors run the real kernel on zeros, which only works for
static sizes: when Dynamo recompiles a serving loop with a symbolic batch, each layer breaks
the graph and runs eagerly, outside any compiled graph. :func:`install` registers torch
2.13's Meta kernels (outputs shaped from the inputs, nothing computed) for the ops that have
none; on torch 2.13 and later it registers nothing.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

aten = torch.ops.aten


def transformer_encoder_layer_fwd(src: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``aten._transformer_encoder_layer_fwd``: one encoder layer, the output shaped as
    ``src``."""
    if src.is_nested:
        raise NotImplementedError("_transformer_encoder_layer_fwd on meta: no nested tensors")
    return src.clone() if src.numel() == 0 else torch.empty_like(src)


def native_multi_head_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, embed_dim: int,
    num_head: int, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor,
    proj_weight: torch.Tensor, proj_bias: torch.Tensor, mask: Any = None,
    need_weights: bool = True, average_attn_weights: bool = True, mask_type: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``aten._native_multi_head_attention``: the attention output ``[B, T, proj rows]``
    and the weights (``[B, T, T]`` averaged over heads, ``[B, heads, T, T]`` not, or
    empty)."""
    if query.is_nested or key.is_nested or value.is_nested:
        raise NotImplementedError("_native_multi_head_attention on meta: no nested tensors")
    if query.numel() == 0:
        return query.new_empty(query.shape), query.new_empty(0)
    batch, length = query.size(0), query.size(1)
    output = query.new_empty(batch, length, proj_weight.size(0))
    if not need_weights:
        return output, query.new_empty(0)
    if average_attn_weights:
        return output, query.new_empty(batch, length, length)
    return output, query.new_empty(batch, num_head, length, length)


META_KERNELS: dict[str, Callable[..., Any]] = {
    "_transformer_encoder_layer_fwd": transformer_encoder_layer_fwd,
    "_native_multi_head_attention": native_multi_head_attention,
}
"""ATen op name -> the Meta kernel :func:`install` gives it where torch has none."""

_LIBRARY: list[torch.library.Library] = []  # registrations last as long as their library
REGISTERED: list[str] = []
"""The ops :func:`install` gave a Meta kernel in this process (``doctor`` lists them)."""


def missing_meta_kernels() -> list[str]:
    """The ops of :data:`META_KERNELS` that have no Meta kernel in this torch."""
    return [name for name in META_KERNELS
            if not torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{name}", "Meta")]


def install() -> list[str]:
    """Register the Meta kernels this torch lacks (once per process); the ops registered."""
    missing = missing_meta_kernels()
    if missing:
        library = torch.library.Library("aten", "IMPL")
        for name in missing:
            library.impl(name, META_KERNELS[name], "Meta")
        _LIBRARY.append(library)
        REGISTERED.extend(missing)
    return missing
