"""What a generated kernel is, apart from how its source was written: the specs of its
tensor arguments, its source and launch (:class:`KernelSource`), and how its region's ATen
results map onto what the kernel gives (:func:`stored_in_place`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.fx as fx

from .heuristics import LaunchConfig


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A kernel argument as the FX metadata describes it."""

    name: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype

    @staticmethod
    def of(node: fx.Node) -> "TensorSpec":
        """The spec of a node's fake tensor value."""
        value = node.meta["val"]
        return TensorSpec(node.name, tuple(value.shape), tuple(value.stride()), value.dtype)

    def describe(self) -> str:
        """``name dtype[shape] strides (..)`` for the kernel header."""
        dtype = str(self.dtype).replace("torch.", "")
        return f"{self.name} {dtype}{list(self.shape)} strides {self.stride}"


@dataclasses.dataclass(frozen=True)
class KernelSource:
    """Generated source plus the facts its launcher needs."""

    name: str
    source: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    grid: int
    config: LaunchConfig
    nodes: tuple[str, ...]
    columns: int = 0
    """Elements reduced per row (0 for a pointwise kernel)."""
    stores_into: tuple[tuple[int, int], ...] = ()
    """(output, input) pairs: the region's output at that position is stored into that
    input, in place, and is not among ``outputs`` (see ``passes.fusion``)."""


def stored_in_place(results: tuple, args: Any, stores_into: tuple[tuple[int, int], ...]) -> tuple:
    """A region's ATen ``results`` as its kernel gives them: the outputs of ``stores_into``
    copied into their inputs (of ``args``), the others returned in order."""
    into = dict(stores_into)
    for output, index in into.items():
        args[index].copy_(results[output])
    return tuple(r for i, r in enumerate(results) if i not in into)
