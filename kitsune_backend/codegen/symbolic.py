"""Sizes known only at run time: :class:`Size`, a symbolic size as code generation uses it.

When Dynamo compiles with symbolic sizes, a node's shape holds ``SymInt``\\ s (``s0``,
``16*s0``). Code generation never asks such a value for a Python bool (that would add a
guard, or specialise the size); it wraps it in a :class:`Size`: a sympy expression over
the size symbols that adds, multiplies, divides and compares by structure, decides ``<``
and ``>`` from the symbols' value ranges (Dynamo specialises sizes 0 and 1, so a symbol is
at least 2), and prints as a parenthesized Python/Triton expression over the symbols'
names. A generated kernel takes each symbol as an integer argument after its pointers.
Static sizes stay plain ``int``\\ s: :func:`size` returns an ``int`` whenever it can.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable, Iterable, Union

import sympy
import torch
from torch.utils._sympy.functions import FloorDiv
from torch.utils._sympy.printers import PythonPrinter
from torch.utils._sympy.value_ranges import ValueRanges, bound_sympy

DYNAMIC_SHAPES = "dynamic shapes"
"""How every decline about symbolic sizes begins."""

HINT_FALLBACK = 8192
"""The hint of a size that has none (one that depends on data)."""
_PRINTER = PythonPrinter()
_AT_LEAST_2 = ValueRanges(2, math.inf)


class Undecided(TypeError):
    """Two symbolic sizes whose order the symbols' ranges do not decide."""


_DECIDE: dict[str, tuple[Callable[[ValueRanges], bool], Callable[[ValueRanges], bool]]] = {
    "<": (lambda r: r.upper < 0, lambda r: r.lower >= 0),
    "<=": (lambda r: r.upper <= 0, lambda r: r.lower > 0),
    ">": (lambda r: r.lower > 0, lambda r: r.upper <= 0),
    ">=": (lambda r: r.lower >= 0, lambda r: r.upper < 0),
}
"""For each order ``a op b``: when the bounds of ``a - b`` make it true, and when false."""


def _expr(value: Any) -> sympy.Expr:
    return value.expr if isinstance(value, Size) else sympy.sympify(value)


class Size:
    """A symbolic size (see the module docstring); ``hint`` is its value at the example
    inputs Dynamo traced with."""

    __slots__ = ("expr", "hint")

    def __init__(self, expr: sympy.Expr, hint: int) -> None:
        self.expr = expr
        self.hint = hint

    def _make(self, expr: sympy.Expr, other: Any, fn: Callable[[int, int], int]
              ) -> Union[int, "Size"]:
        other_hint = other.hint if isinstance(other, Size) else other
        return _wrap(expr, fn(self.hint, other_hint))

    def __add__(self, other: Any) -> Union[int, "Size"]:
        return self._make(self.expr + _expr(other), other, operator.add)

    def __mul__(self, other: Any) -> Union[int, "Size"]:
        return self._make(self.expr * _expr(other), other, operator.mul)

    def __sub__(self, other: Any) -> Union[int, "Size"]:
        return self._make(self.expr - _expr(other), other, operator.sub)

    def __rsub__(self, other: Any) -> Union[int, "Size"]:
        return self._make(_expr(other) - self.expr, other, lambda a, b: b - a)

    def __floordiv__(self, other: Any) -> Union[int, "Size"]:
        return self._make(FloorDiv(self.expr, _expr(other)), other, operator.floordiv)

    __radd__ = __add__
    __rmul__ = __mul__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (int, Size)):
            return NotImplemented
        return sympy.expand(self.expr - _expr(other)) == 0

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self) -> int:
        return hash(sympy.expand(self.expr))

    def _difference_bounds(self, other: Any) -> ValueRanges:
        """Bounds of ``self - other``: the tighter of its expanded and factored forms'
        (``s0*s1 - s0`` bounds only as ``s0*(s1 - 1)``)."""
        expr = sympy.expand(self.expr - _expr(other))
        ranges = {s: _AT_LEAST_2 for s in expr.free_symbols}
        expanded, factored = bound_sympy(expr, ranges), bound_sympy(sympy.factor(expr), ranges)
        return ValueRanges(max(expanded.lower, factored.lower), min(expanded.upper, factored.upper))

    def __lt__(self, other: Any) -> bool:
        return self._order(other, "<")

    def __le__(self, other: Any) -> bool:
        return self._order(other, "<=")

    def __gt__(self, other: Any) -> bool:
        return self._order(other, ">")

    def __ge__(self, other: Any) -> bool:
        return self._order(other, ">=")

    def _order(self, other: Any, op: str) -> bool:
        if not isinstance(other, (int, Size)):
            return NotImplemented
        bounds = self._difference_bounds(other)
        true, false = _DECIDE[op]
        if true(bounds):
            return True
        if false(bounds):
            return False
        raise Undecided(f"{self} {op} {other} is not decided by the sizes' ranges")

    def __str__(self) -> str:
        text = _PRINTER.doprint(self.expr)
        return text if isinstance(self.expr, sympy.Symbol) else f"({text})"

    def __format__(self, spec: str) -> str:
        return str(self)

    __repr__ = __str__


def _wrap(expr: sympy.Expr, hint: int) -> Union[int, Size]:
    expr = sympy.expand(expr)
    if expr.is_Integer:
        return int(expr)
    return Size(expr, int(hint))


def size(value: Any) -> Union[int, Size]:
    """``value`` (an int or a ``SymInt``) as an ``int`` when it is static, else a
    :class:`Size`."""
    if isinstance(value, torch.SymInt):
        expr = value.node.expr
        if expr.is_Integer:
            return int(expr)
        return Size(expr, _hint_of(value.node.shape_env, expr))
    return int(value)


def _hint_of(shape_env: Any, expr: sympy.Expr) -> int:
    """The value of ``expr`` at the traced sizes, without a guard; :data:`HINT_FALLBACK`
    for a size that depends on data (:func:`why_not_arguments` keeps those out of
    kernels). ``optimization_hint`` is torch 2.13's name; older ones have ``size_hint``."""
    if hasattr(shape_env, "optimization_hint"):
        return int(shape_env.optimization_hint(expr, fallback=HINT_FALLBACK))
    found = shape_env.size_hint(expr, allow_none=True)
    return HINT_FALLBACK if found is None else int(found)


def why_not_arguments(value: torch.Tensor) -> str:
    """Why the size symbols of tensor ``value`` cannot be kernel arguments ('' when they
    can): each must be at least 2, in Dynamo's ranges (a size that depends on data, or
    one that may be 0 or 1, is not)."""
    for item in (*value.shape, *value.stride()):
        if not isinstance(item, torch.SymInt):
            continue
        ranges = item.node.shape_env.var_to_range
        for symbol in sorted(item.node.expr.free_symbols, key=str):
            low = ranges[symbol].lower if symbol in ranges else -math.inf
            if not low >= 2:
                return (f"{DYNAMIC_SHAPES}: size {symbol} may be {low} (a size that depends on "
                        "data, or may be 0 or 1, is no kernel argument)")
    return ""


def is_symbolic(value: Any) -> bool:
    """Whether ``value`` is a :class:`Size`."""
    return isinstance(value, Size)


def is_size_node(node: Any) -> bool:
    """Whether FX node ``node`` computes a size (a ``SymInt``), not a tensor."""
    return isinstance(node.meta.get("val"), torch.SymInt)


def hint(value: Union[int, Size]) -> int:
    """The value of ``value`` at the traced example sizes."""
    return value.hint if isinstance(value, Size) else value


def symbols_of(values: Iterable[Any]) -> set[sympy.Symbol]:
    """The size symbols the :class:`Size` values among ``values`` depend on."""
    found: set[sympy.Symbol] = set()
    for value in values:
        if isinstance(value, Size):
            found |= value.expr.free_symbols
    return found
