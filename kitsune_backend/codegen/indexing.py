"""Index arithmetic: how a flat or (row, column) position maps to an element's memory offset.

A tensor of ``sizes`` and ``strides`` is read at logical position ``i`` (row-major over
``sizes``) at ``sum(((i // inner_d) % size_d) * stride_d)``. Size-1 dims and dims with
stride 0 (broadcast) add nothing; adjacent dims that are contiguous with each other merge
into one, so a contiguous tensor is read at ``i`` itself.
"""

from __future__ import annotations

import re
from typing import Sequence


def broadcast_strides(
    sizes: Sequence[int], strides: Sequence[int], target: Sequence[int]
) -> list[int]:
    """Strides that read a tensor of ``sizes``/``strides`` broadcast to shape ``target``."""
    pad = len(target) - len(sizes)
    if pad < 0:
        raise ValueError(f"cannot broadcast {tuple(sizes)} to {tuple(target)}")
    out = [0] * pad
    for size, stride, want in zip(sizes, strides, target[pad:]):
        if size == want:
            out.append(stride if size != 1 else 0)
        elif size == 1:
            out.append(0)
        else:
            raise ValueError(f"cannot broadcast {tuple(sizes)} to {tuple(target)}")
    return out


def collapse(sizes: Sequence[int], strides: Sequence[int]) -> list[tuple[int, int]]:
    """``(size, stride)`` dims with size-1 dims dropped and contiguous neighbours merged."""
    dims: list[tuple[int, int]] = []
    for size, stride in zip(sizes, strides):
        if size == 1:
            continue
        if dims:
            outer_size, outer_stride = dims[-1]
            if outer_stride == size * stride:
                dims[-1] = (outer_size * size, stride)
                continue
        dims.append((size, stride))
    return dims


def offset_expr(index: str, dims: list[tuple[int, int]]) -> str:
    """Source for the memory offset of logical position ``index`` over collapsed ``dims``.

    The outermost dim takes no modulo: positions past the end only occur in masked lanes.
    """
    terms = []
    inner = 1
    for position in range(len(dims) - 1, -1, -1):
        size, stride = dims[position]
        if stride != 0:
            term = index if inner == 1 else f"({index} // {inner})"
            if position > 0:
                term = f"({term} % {size})"
            if stride != 1:
                term = f"{term} * {stride}"
            terms.append(term)
        inner *= size
    return " + ".join(reversed(terms)) if terms else "0"


def split_dims(
    sizes: Sequence[int], strides: Sequence[int], reduced: Sequence[int]
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Collapsed (kept dims, reduced dims) of a tensor read in a row-reduction kernel."""
    kept = [d for d in range(len(sizes)) if d not in reduced]
    red = [d for d in range(len(sizes)) if d in reduced]
    return (
        collapse([sizes[d] for d in kept], [strides[d] for d in kept]),
        collapse([sizes[d] for d in red], [strides[d] for d in red]),
    )


def max_offset(sizes: Sequence[int], strides: Sequence[int]) -> int:
    """The largest element offset a tensor reaches (0 for an empty or 0-d tensor)."""
    if any(s == 0 for s in sizes):
        return 0
    return sum((size - 1) * abs(stride) for size, stride in zip(sizes, strides))


def uses(expr: str, var: str) -> bool:
    """True when source ``expr`` mentions variable ``var``."""
    return re.search(rf"\b{var}\b", expr) is not None


def strip_leading(shape: Sequence[int], stride: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shape and strides without leading size-1 dims (they do not move any element)."""
    drop = 0
    while drop < len(shape) and shape[drop] == 1:
        drop += 1
    return tuple(shape[drop:]), tuple(stride[drop:])
