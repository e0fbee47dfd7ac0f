"""What a generated kernel's launcher needs besides its source: the layout of each tensor
argument (:class:`TensorSpec`) and the launch (:class:`KernelSource`).

A kernel generated for symbolic sizes takes the size symbols as integer arguments after
its pointers (``KernelSource.symbols``); its specs and grid then hold
:class:`~kitsune_backend.codegen.symbolic.Size` expressions, and ``KernelSource.layout`` is
Python source of a function of the symbols that gives, at each call, the grid and every
argument's shape and strides (what the launcher checks its tensors against and allocates
its outputs with).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence, Union

import torch
import torch.fx as fx

from .heuristics import LaunchConfig
from .symbolic import Size, size, symbols_of


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A kernel argument as the FX metadata describes it (a :class:`Size` for each
    symbolic size or stride)."""

    name: str
    shape: tuple[Union[int, Size], ...]
    stride: tuple[Union[int, Size], ...]
    dtype: torch.dtype

    @staticmethod
    def of(node: fx.Node) -> "TensorSpec":
        """The spec of a node's fake tensor value."""
        value = node.meta["val"]
        return TensorSpec(node.name, tuple(size(s) for s in value.shape),
                          tuple(size(s) for s in value.stride()), value.dtype)

    def describe(self) -> str:
        """``name dtype[shape] strides (..)`` for the kernel header."""
        dtype = str(self.dtype).replace("torch.", "")
        return f"{self.name} {dtype}{list(self.shape)} strides {tuple(self.stride)}"


@dataclasses.dataclass(frozen=True)
class KernelSource:
    """Generated source plus the facts its launcher needs."""

    name: str
    source: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    grid: Union[int, Size]
    config: LaunchConfig
    nodes: tuple[str, ...]
    columns: Union[int, Size] = 0
    """Elements reduced per row (0 for a pointwise kernel)."""
    symbols: tuple[str, ...] = ()
    """The size symbols the kernel takes as arguments after its pointers, in order."""
    layout: str = ""
    """For symbolic sizes: Python source of ``lambda <symbols>: (grid, inputs, outputs)``,
    each input and output a ``(shape, strides)`` pair."""
    stores_into: tuple[tuple[int, int], ...] = ()
    """(output, input) pairs: the region's output at that position is stored into that
    input, in place, and is not among ``outputs`` (see ``passes.in_place``)."""


def stored_in_place(results: tuple, args: Any, stores_into: tuple[tuple[int, int], ...]) -> tuple:
    """A region's ATen ``results`` as its kernel gives them: the outputs of ``stores_into``
    copied into their inputs (of ``args``), the others returned in order."""
    into = dict(stores_into)
    for output, index in into.items():
        args[index].copy_(results[output])
    return tuple(r for i, r in enumerate(results) if i not in into)


def symbols_in(specs: Sequence[TensorSpec], shapes: Sequence[tuple]) -> tuple[str, ...]:
    """The names of the size symbols ``specs`` and ``shapes`` depend on, sorted."""
    found = set()
    for spec in specs:
        found |= symbols_of((*spec.shape, *spec.stride))
    for shape in shapes:
        found |= symbols_of(shape)
    return tuple(sorted((str(s) for s in found), key=lambda n: (len(n), n)))


def layout_source(symbols: Sequence[str], grid: Any, inputs: Sequence[TensorSpec],
                  outputs: Sequence[TensorSpec]) -> str:
    """The :attr:`KernelSource.layout` of a kernel over ``symbols``."""

    def tuple_of(items: Sequence[Any]) -> str:
        return f"({''.join(f'{item}, ' for item in items)})"

    def specs(group: Sequence[TensorSpec]) -> str:
        return tuple_of([f"({tuple_of(s.shape)}, {tuple_of(s.stride)})" for s in group])

    return f"lambda {', '.join(symbols)}: ({grid}, {specs(inputs)}, {specs(outputs)})"


def layout_function(generated: KernelSource) -> Callable[..., tuple]:
    """The layout of a symbolic kernel as a callable (``eval`` of its source, which holds
    only integer arithmetic over the symbols)."""
    return eval(generated.layout, {"__builtins__": {}})  # noqa: S307 - our own source


def at_sizes(specs: Sequence[TensorSpec], layouts: Sequence[tuple]) -> tuple[TensorSpec, ...]:
    """``specs`` with the shapes and strides one call's layout gives."""
    return tuple(TensorSpec(s.name, tuple(shape), tuple(stride), s.dtype)
                 for s, (shape, stride) in zip(specs, layouts))


def cdiv(numerator: Union[int, Size], denominator: int) -> Union[int, Size]:
    """``ceil(numerator / denominator)``, symbolic when the numerator is."""
    if isinstance(numerator, Size):
        return (numerator + (denominator - 1)) // denominator
    return -(-numerator // denominator)


