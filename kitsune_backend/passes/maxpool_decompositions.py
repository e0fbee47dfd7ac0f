"""Max-pool forward and backward as ops the fusion pass fuses (slices, cats, ``where``).

``aten.max_pool2d_with_indices`` and ``aten.max_pool2d_with_indices_backward`` are library
calls: left as they are, the pointwise ops around them (the ReLU before, the
``threshold_backward`` after the backward) cannot share a kernel with them. Here both are
rewritten into pieces :mod:`kitsune_backend.codegen` already fuses. The backward then
shares one kernel with the ``threshold_backward`` after it. The forward becomes one
generated kernel, but not yet one with the ReLU before it: a strided slice of a region's
value stays an ATen view, so the ReLU's output is written and the pool kernel reads it.

Forward, for each window offset ``(di, dj)`` in window order: the input cells
``x[..., oh*s - p + di, ow*s - p + dj]`` are one strided slice of the input (an ATen view a
kernel reads through its strides), padded with ``-inf`` fills by ``cat`` where the offset
falls outside the input (a padded cell never wins). A running max keeps eager's rule
exactly (ATen's kernels: ``if (val > maxval || isnan(val))``): the first max in window order
wins ties and the last NaN wins. The flat index ``h*W + w`` comes from ``arange``s, which
kernels compute in place of a load. Before::

    pool = aten.max_pool2d_with_indices(x, [2, 2])      # (values [4,6,14,14], indices)

After (offsets (0,1), (1,0), (1,1) repeat the middle three lines)::

    v00 = aten.slice(aten.slice(x, 2, 0, 27, 2), 3, 0, 27, 2)   # x[..., 0::2, 0::2]
    v01 = aten.slice(aten.slice(x, 2, 0, 27, 2), 3, 1, 28, 2)   # x[..., 0::2, 1::2]
    up = (v01 > v00) | (v01 != v01)
    m = where(up, v01, v00); ih = where(up, arange(0, 392, 56)[:, None], ih00); ...
    indices = ih + iw

Backward, gathered per input cell rather than scattered per output: with ``h + p = q*s + r``
(``0 <= r < s``) the windows holding row ``h`` are ``oh = q - a`` for ``a*s + r < k``. The
gradient, viewed as ``[..., Q, s, Qw, s]`` (an identity view of the row-major padded input
grid), is a sum over window slots ``(a, b)`` of ``where(indices[q-a, q'-b] == h*W + w,
grad_out[q-a, q'-b], 0)``, where ``grad_out``/``indices`` shifted by ``(a, b)`` are slices
padded by ``cat`` and broadcast over ``r``. Every op is pointwise, so the
``threshold_backward`` that follows joins the same kernel. Before::

    g = aten.max_pool2d_with_indices_backward(grad, x, [2, 2], [], [0, 0], [1, 1], False, idx)

After (k = s = 2, no padding: one window slot)::

    flat = arange(0, 784, 28).view(14, 2, 1, 1) + arange(28).view(14, 2)
    g6 = where(idx.view(4, 6, 14, 1, 14, 1) == flat, grad.view(4, 6, 14, 1, 14, 1), 0)
    g = g6.view(4, 6, 28, 28)

Declined (``NotImplemented``: the ATen op stays, and is correct): dilation other than 1,
windows of more than :data:`MAX_WINDOW_AREA` cells, non-float dtypes, empty or
symbolic shapes, inputs that are not contiguous (a ``channels_last`` pool's output keeps
that layout in eager).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch._meta_registrations import pooling_output_shape

aten = torch.ops.aten

MAX_WINDOW_AREA = 16
"""Largest kernel area (kH*kW) decomposed. The forward unrolls two ``where`` chains and a
view per window cell, the backward a masked term per overlapping window; past 4x4 the
generated kernel grows long (compile time, registers) while ATen's loop costs the same
launch, so larger windows stay ATen calls."""

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""Dtypes decomposed: the running max compares floats; integer pools stay ATen."""


def _pair(values, default: Sequence[int]) -> tuple[int, int]:
    """A 2-D pool argument (an int, one or two ints; empty: ``default``) as two ints."""
    values = [values] if isinstance(values, int) else list(values) or list(default)
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _params(x: torch.Tensor, kernel_size, stride, padding, dilation, ceil_mode):
    """``((kH, kW), (sH, sW), (pH, pW), (Ho, Wo))``, or ``None`` when the pool is declined."""
    if x.dtype not in FLOAT_DTYPES or x.dim() not in (3, 4):
        return None
    if any(not isinstance(d, int) for d in x.shape) or x.numel() == 0:
        return None
    if not x.is_contiguous():
        return None  # channels_last: eager's output keeps that layout, the decomposition not
    kernel = _pair(kernel_size, ())
    stride = _pair(stride, kernel)
    pad = _pair(padding, (0,))
    if _pair(dilation, (1,)) != (1, 1) or kernel[0] * kernel[1] > MAX_WINDOW_AREA:
        return None
    if min(*kernel, *stride) <= 0 or any(2 * p > k for p, k in zip(pad, kernel)):
        return None  # invalid arguments: ATen raises its own error
    out = tuple(pooling_output_shape(x.shape[d - 2], kernel[d], pad[d], stride[d], 1, ceil_mode)
                for d in range(2))
    if min(out) <= 0:
        return None
    return kernel, stride, pad, out


def _full(shape: Sequence[int], value, like: torch.Tensor) -> torch.Tensor:
    return aten.full.default(list(shape), value, dtype=like.dtype, device=like.device)


def _cells(x: torch.Tensor, start: tuple[int, int], step: tuple[int, int],
           size: tuple[int, int], fill) -> Optional[torch.Tensor]:
    """``y[..., i, j] = x[..., start[0] + step[0]*i, start[1] + step[1]*j]`` for ``(i, j)`` in
    ``[0, size)``, and ``fill`` where that falls outside ``x``: one strided slice per dim,
    then ``cat`` with fills (slices first, so the cats read ``x`` itself, a kernel input);
    ``None`` when no cell falls inside ``x``."""
    runs = [_inside(start[a], step[a], size[a], x.shape[x.dim() - 2 + a]) for a in range(2)]
    if min(count for _, count in runs) <= 0:
        return None
    part = x
    for axis, (first, count) in enumerate(runs):
        dim = x.dim() - 2 + axis
        begin = start[axis] + step[axis] * first
        if (begin, step[axis], count) != (0, 1, x.shape[dim]):
            end = begin + step[axis] * (count - 1) + 1
            part = aten.slice.Tensor(part, dim, begin, end, step[axis])
    for axis in (1, 0):
        dim = x.dim() - 2 + axis
        first, count = runs[axis]
        pieces = []
        for n in (first, size[axis] - first - count):
            shape = list(part.shape)
            shape[dim] = n
            pieces.append(_full(shape, fill, x) if n > 0 else None)
        if pieces != [None, None]:
            ordered = [pieces[0], part, pieces[1]]
            part = aten.cat.default([p for p in ordered if p is not None], dim)
    return part


def _inside(start: int, step: int, out: int, size: int) -> tuple[int, int]:
    """``(first, count)``: the run of ``i`` in ``[0, out)`` with ``0 <= start + step*i < size``."""
    first = max(0, -(start // step))
    last = min(out - 1, (size - 1 - start) // step)
    return first, max(0, last - first + 1)


def _arange(start: int, step: int, count: int, like: torch.Tensor) -> torch.Tensor:
    return aten.arange.start_step(start, start + step * count, step, dtype=torch.int64,
                                  device=like.device)


def max_pool2d_with_indices(x: torch.Tensor, kernel_size, stride=(), padding=(0,),
                            dilation=(1,), ceil_mode: bool = False):
    """``max_pool2d_with_indices`` as strided slices and a running max (module docstring);
    ``NotImplemented`` where declined."""
    params = _params(x, kernel_size, stride, padding, dilation, ceil_mode)
    if params is None:
        return NotImplemented
    (kh, kw), (sh, sw), (ph, pw), (ho, wo) = params
    width = x.shape[-1]
    lead = list(x.shape[:-2])
    best = ih = iw = None
    if ph or pw:  # the first window cell may be padding: start from -inf and the first real cell
        best = _full(lead + [ho, wo], float("-inf"), x)
        ih = aten.mul.Tensor(aten.clamp_min.default(_arange(-ph, sh, ho, x), 0), width).view(ho, 1)
        iw = aten.clamp_min.default(_arange(-pw, sw, wo, x), 0)
    for di in range(kh):
        for dj in range(kw):
            value = _cells(x, (di - ph, dj - pw), (sh, sw), (ho, wo), float("-inf"))
            if value is None:
                continue  # this window cell is padding for every output
            row = _arange((di - ph) * width, sh * width, ho, x).view(ho, 1)
            col = _arange(dj - pw, sw, wo, x)
            if best is None:
                best, ih, iw = value, row, col
                continue
            update = aten.logical_or.default(aten.gt.Tensor(value, best),
                                             aten.ne.Tensor(value, value))
            best = aten.where.self(update, value, best)
            ih = aten.where.self(update, row, ih)
            iw = aten.where.self(update, col, iw)
    indices = aten.add.Tensor(ih, iw)
    if tuple(indices.shape) != tuple(best.shape):
        indices = aten.add.Tensor(indices, _full(best.shape, 0, indices))
    return best, indices


def max_pool2d_with_indices_backward(grad_output: torch.Tensor, x: torch.Tensor, kernel_size,
                                     stride, padding, dilation, ceil_mode: bool,
                                     indices: torch.Tensor):
    """``max_pool2d_with_indices_backward`` as a pointwise sum over the windows holding each
    input cell (module docstring); ``NotImplemented`` where declined. ``indices`` are taken
    to lie in their own windows, as the forward produces them."""
    params = _params(x, kernel_size, stride, padding, dilation, ceil_mode)
    if params is None or grad_output.dtype != x.dtype:
        return NotImplemented
    (kh, kw), (sh, sw), (ph, pw), (ho, wo) = params
    if tuple(grad_output.shape[-2:]) != (ho, wo) or tuple(indices.shape) != tuple(
            grad_output.shape):
        return NotImplemented
    height, width = x.shape[-2], x.shape[-1]
    lead = list(x.shape[:-2])
    qh, qw = (height - 1 + ph) // sh + 1, (width - 1 + pw) // sw + 1
    # flat input index of each padded-grid cell (q, r, q', r'); cells of the padding never match
    flat = aten.add.Tensor(_arange(-ph * width, width, qh * sh, x).view(qh, sh, 1, 1),
                           _arange(-pw, 1, qw * sw, x).view(qw, sw))
    grid6 = lead + [qh, 1, qw, 1]
    total = None  # slot (0, 0) always has a term
    for a in range(-(-kh // sh)):
        for b in range(-(-kw // sw)):
            term = _slot(grad_output, indices, flat, (a, b), (qh, qw), grid6)
            if term is None:
                continue
            mask = _slot_mask((kh - a * sh, kw - b * sw), (sh, sw), x)
            if mask is not None:
                term = aten.where.self(mask, term, _full((), 0, term))
            total = term if total is None else aten.add.Tensor(total, term)
    grad = aten.view.default(total, lead + [qh * sh, qw * sw])
    if (ph, pw) != (0, 0) or (qh * sh, qw * sw) != (height, width):
        grad = aten.slice.Tensor(grad, x.dim() - 2, ph, ph + height)
        grad = aten.slice.Tensor(grad, x.dim() - 1, pw, pw + width)
    return grad


def _slot(grad_output, indices, flat, slot, grid, grid6) -> Optional[torch.Tensor]:
    """The gradient each padded-grid cell gets from window slot ``(a, b)``: ``grad_output``
    at window ``(q - a, q' - b)`` where that window's index is this cell, else 0."""
    pieces = []
    for tensor, fill in ((grad_output, 0), (indices, -1)):
        shifted = _cells(tensor, (-slot[0], -slot[1]), (1, 1), grid, fill)
        if shifted is None:
            return None
        pieces.append(aten.view.default(shifted, grid6))
    hit = aten.eq.Tensor(pieces[1], flat)
    return aten.where.self(hit, pieces[0], _full((), 0, grad_output))


def _slot_mask(reach: tuple[int, int], stride: tuple[int, int], like) -> Optional[torch.Tensor]:
    """For a window slot, which ``(r, r')`` lie inside the window (``a*s + r < k``), shaped
    ``[s, 1, s']`` to broadcast over the padded grid; ``None`` when all do."""
    if reach[0] >= stride[0] and reach[1] >= stride[1]:
        return None
    rows = aten.lt.Scalar(_arange(0, 1, stride[0], like), reach[0]).view(stride[0], 1, 1)
    cols = aten.lt.Scalar(_arange(0, 1, stride[1], like), reach[1])
    return aten.logical_and.default(rows, cols)


