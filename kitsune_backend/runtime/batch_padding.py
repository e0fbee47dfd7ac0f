"""Batch padding: a call of batch size ``n`` runs as a call of the bucket's size.

For a graph whose rows of the batch stay apart (:class:`~kitsune_backend.ir.BatchSplit`,
decided by the batch_split stage), a call of batch size ``n`` is run at the bucket ``N``
(the next power of two, at most the largest size the graph's guards allow): the int inputs
that are the batch size become ``N``, the tensor inputs that carry the batch get ``N - n``
rows of zeros after their own, and each output that carries the batch is sliced back to its
first ``n`` rows. The real rows never meet the padding, so they come out as unpadded.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..ir import BatchSplit


def bucket(n: int, most: int = 0) -> int:
    """The next power of two from ``n`` (``n`` itself when it is one), at most ``most``
    (0: no bound)."""
    up = 1 << max(n - 1, 0).bit_length()
    return min(up, most) if most else up


def copy_rows(buf: torch.Tensor, x: torch.Tensor, dim: int) -> None:
    """Copy ``x`` into the first rows of ``buf`` along ``dim``; zero the rows after them."""
    rows, total = x.shape[dim], buf.shape[dim]
    if rows == total:
        buf.copy_(x)
        return
    buf.narrow(dim, 0, rows).copy_(x)
    buf.narrow(dim, rows, total - rows).zero_()


def _zeros_like_layout(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Zeros of ``shape`` whose dims lie in memory in the order ``x``'s do."""
    order = sorted(range(x.dim()), key=lambda d: -x.stride(d))  # outermost first
    made = torch.zeros([shape[d] for d in order], dtype=x.dtype, device=x.device)
    return made.permute([order.index(d) for d in range(x.dim())])


class BatchPadder:
    """Pads the inputs of one graph's calls to the bucket, and slices its outputs back."""

    def __init__(self, split: BatchSplit) -> None:
        self.split = split
        self.sizes = split.size_inputs
        self.inputs = dict(split.inputs)
        self.outputs = split.outputs

    def batch(self, args: Sequence[Any]) -> tuple[int, int]:
        """The call's batch size and its bucket."""
        n = int(args[self.sizes[0]])
        return n, bucket(n, self.split.most)

    def with_size(self, args: Sequence[Any], padded: int) -> list[Any]:
        """``args`` with the batch-size ints set to ``padded`` (tensors left as they are)."""
        found = list(args)
        for i in self.sizes:
            found[i] = padded
        return found

    def padded_shape(self, x: torch.Tensor, dim: int, n: int, padded: int) -> tuple:
        """The shape of input ``x`` (batch size ``n``) padded to ``padded``."""
        shape = list(x.shape)
        shape[dim] = shape[dim] // n * padded
        return tuple(shape)

    def pad(self, args: Sequence[Any], n: int, padded: int) -> list[Any]:
        """``with_size`` args whose batch inputs are new tensors, padded with zeros."""
        found = list(args)
        for i, dim in self.inputs.items():
            x = args[i]
            made = _zeros_like_layout(x, self.padded_shape(x, dim, n, padded))
            copy_rows(made, x, dim)
            found[i] = made
        return found

    def key(self, args: Sequence[Any], indices: Sequence[int], n: int, padded: int) -> tuple:
        """The shape signature of a padded call: like
        :func:`~kitsune_backend.runtime.shape_cache.signature`, with each batch input's
        padded shape (its strides are those of the buffer it is copied into)."""
        return tuple(
            self.padded_shape(args[i], self.inputs[i], n, padded) if i in self.inputs
            else (tuple(args[i].shape), args[i].stride()) if isinstance(args[i], torch.Tensor)
            else args[i]
            for i in indices
        )

    def unpad(self, result: Any, n: int, padded: int) -> Any:
        """``result`` with every output that carries the batch cut back to ``n`` rows."""
        if n == padded:
            return result
        outs = list(result) if isinstance(result, (list, tuple)) else [result]
        for i, dim in self.outputs:
            out = outs[i]
            outs[i] = out.narrow(dim, 0, out.shape[dim] // padded * n)
        if not isinstance(result, (list, tuple)):
            return outs[0]
        return tuple(outs) if isinstance(result, tuple) else outs
