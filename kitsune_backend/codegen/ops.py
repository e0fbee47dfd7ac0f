"""Which ATen ops kitsune fuses, and the Triton expression each one lowers to.

Five families: pointwise ops (one output element from the same element of each input);
``cat`` and gathers (``index`` by integer tensors: each output element from one element
of one input, see :mod:`kitsune_backend.codegen.spaces`); constant and index sources,
computed in place (:mod:`kitsune_backend.codegen.index_sources`); reductions
(``sum``/``mean``/``amax``/``amin`` over some dims; ``var``/``var_mean`` reach the fusion
pass already decomposed into these, see :mod:`kitsune_backend.passes.decompositions`); and
identity views (reshapes that keep the logical element order, folded into index math).

Every value inside a kernel lives in a *compute dtype*: float16/bfloat16/float32 compute in
float32 (so fp16/bf16 math accumulates in fp32), float64 in float64, integers and bool as
themselves. A lowering is ``fn(args, node) -> str``: ``args`` are the operand expressions,
tensors already cast to the op's compute dtype, Python scalars as literals.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
import torch.fx as fx

from ..graph_utils import is_view
from ..philox import PHILOX_UNIFORM
from . import index_sources
from .node_kinds import is_identity_view, literal, packet
from .symbolic import DYNAMIC_SHAPES, is_symbolic, size


def has_symbolic_size(node: fx.Node) -> bool:
    """Whether ``node`` or one of its tensor inputs has a symbolic size or stride."""
    for item in (node, *node.all_input_nodes):
        value = item.meta.get("val")
        if isinstance(value, torch.Tensor) and any(
                is_symbolic(size(s)) for s in (*value.shape, *value.stride())):
            return True
    return False

aten = torch.ops.aten
prims = torch.ops.prims

TL_DTYPES = {
    torch.float16: "tl.float16",
    torch.bfloat16: "tl.bfloat16",
    torch.float32: "tl.float32",
    torch.float64: "tl.float64",
    torch.int8: "tl.int8",
    torch.uint8: "tl.uint8",
    torch.int16: "tl.int16",
    torch.int32: "tl.int32",
    torch.int64: "tl.int64",
    torch.bool: "tl.int1",
}
"""dtypes a generated kernel can load and store; anything else ends a region."""


def held_as_eager(expr: str, dtype: torch.dtype, consumer_dtype: torch.dtype) -> str:
    """``expr``, the fp32 value of a region node of ``dtype``, as its consumer of
    ``consumer_dtype`` must read it. Kernels compute fp16/bf16 values in fp32 and round them
    when they store; where such a value leaves its dtype inside the kernel (promoted into an
    fp32 op or cat, cast, compared, reduced into fp32), eager would have rounded it when it was
    made, so it is rounded here first."""
    if dtype in (torch.float16, torch.bfloat16) and consumer_dtype != dtype:
        return f"{expr}.to({TL_DTYPES[dtype]}).to(tl.float32)"
    return expr


def compute_dtype(dtype: torch.dtype) -> str:
    """The Triton dtype a value of ``dtype`` is computed in (fp16/bf16 widen to fp32)."""
    if dtype in (torch.float16, torch.bfloat16):
        return "tl.float32"
    return TL_DTYPES[dtype]


NAN = "propagate_nan=tl.PropagateNan.ALL"
"""max/min propagate NaN, as in eager."""


def _tanh(a: str) -> str:
    return f"(2.0 * tl.sigmoid(2.0 * {a}) - 1.0)"


_SQRT1_2 = 0.7071067811865476
_SQRT_2_OVER_PI = 0.7978845608028654
_INV_SQRT_2PI = 0.3989422804014327


def _gelu(args: list[str], node: fx.Node) -> str:
    a = args[0]
    if _kw(node, "approximate", 1, "none") == "tanh":
        inner = f"{_SQRT_2_OVER_PI} * ({a} + 0.044715 * {a} * {a} * {a})"
        return f"(0.5 * {a} * (1.0 + {_tanh(inner)}))"
    return f"(0.5 * {a} * (1.0 + tl.erf({a} * {_SQRT1_2})))"


def _gelu_backward(args: list[str], node: fx.Node) -> str:
    g, x = args[0], args[1]
    if _kw(node, "approximate", 2, "none") == "tanh":
        inner = f"{_SQRT_2_OVER_PI} * ({x} + 0.044715 * {x} * {x} * {x})"
        t = _tanh(inner)
        dinner = f"{_SQRT_2_OVER_PI} * (1.0 + 3.0 * 0.044715 * {x} * {x})"
        return f"({g} * (0.5 * (1.0 + {t}) + 0.5 * {x} * (1.0 - {t} * {t}) * {dinner}))"
    cdf = f"(0.5 * (1.0 + tl.erf({x} * {_SQRT1_2})))"
    pdf = f"({_INV_SQRT_2PI} * tl.exp(-0.5 * {x} * {x}))"
    return f"({g} * ({cdf} + {x} * {pdf}))"


def _pow(args: list[str], node: fx.Node) -> str:
    if not isinstance(node.args[0], fx.Node):  # pow.Scalar: a positive number to tensor powers
        log_base = math.log(float(torch.tensor(float(node.args[0]), dtype=torch.float32)))
        # exp(e * log(base)) in float64: within an ulp of eager's float32 powf
        return f"tl.exp({args[1]}.to(tl.float64) * {log_base!r}).to(tl.float32)"
    a, e = args[0], node.args[1]
    if isinstance(e, (int, float)) and float(e).is_integer() and abs(e) <= 4:
        e = int(e)
        if e == 0:
            return f"({a} * 0.0 + 1.0)"
        body = " * ".join([a] * abs(e))
        return f"({body})" if e > 0 else f"(1.0 / ({body}))"
    if e == 0.5:
        return f"tl.sqrt({a})"
    return f"tl.exp({literal(float(e))} * tl.log({a}))"


def _clamp(args: list[str], node: fx.Node) -> str:
    out = args[0]
    lo = args[1] if len(args) > 1 else "None"
    hi = args[2] if len(args) > 2 else "None"
    if lo != "None":
        out = f"tl.maximum({out}, {lo}, {NAN})"
    if hi != "None":
        out = f"tl.minimum({out}, {hi}, {NAN})"
    return out


def _cast(args: list[str], node: fx.Node) -> str:
    target = node.meta["val"].dtype
    if target == torch.bool:
        return f"({args[0]} != 0)"
    if target in (torch.float16, torch.bfloat16):  # round like eager, keep computing in fp32
        return f"{args[0]}.to({TL_DTYPES[target]}).to(tl.float32)"
    return f"{args[0]}.to({compute_dtype(target)})"


def _kw(node: fx.Node, name: str, position: int, default: Any) -> Any:
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[position] if len(node.args) > position else default


def _alpha(node: fx.Node) -> str:
    alpha = node.kwargs.get("alpha", 1)
    return "" if alpha == 1 else f"{literal(alpha)} * "


def _bitwise(expr: str, node: fx.Node) -> str:
    """A bitwise result in the node's own dtype (a Python-int operand may widen it)."""
    return f"{expr}.to({compute_dtype(node.meta['val'].dtype)})"


def _bitwise_not(a: str, node: fx.Node) -> str:
    dtype = node.meta["val"].dtype
    if dtype == torch.bool:
        return f"({a} == 0)"
    ones = (1 << (8 * dtype.itemsize)) - 1 if dtype == torch.uint8 else -1  # all bits set
    return _bitwise(f"({a} ^ {ones})", node)


def _binary(symbol: str) -> Callable[[list[str], fx.Node], str]:
    return lambda a, n: f"({a[0]} {symbol} {a[1]})"


def _call(fn: str) -> Callable[[list[str], fx.Node], str]:
    return lambda a, n: f"{fn}({a[0]})"


# overload packet -> (lowering, cast mode): "result" casts tensor operands to the result's
# compute dtype; "promote" to the promoted dtype of the operands (comparisons); "none": as is.
POINTWISE: dict[Any, tuple[Callable[[list[str], fx.Node], str], str]] = {
    aten.add: (lambda a, n: f"({a[0]} + {_alpha(n)}{a[1]})", "result"),
    aten.sub: (lambda a, n: f"({a[0]} - {_alpha(n)}{a[1]})", "result"),
    aten.rsub: (lambda a, n: f"({a[1]} - {_alpha(n)}{a[0]})", "result"),
    aten.mul: (_binary("*"), "result"),
    torch.ops.prims.fma: (lambda a, n: f"({a[0]} * {a[1]} + {a[2]})", "result"),  # addcmul
    aten.div: (_binary("/"), "result"),
    aten.true_divide: (_binary("/"), "result"),
    aten.neg: (lambda a, n: f"(-{a[0]})", "result"),
    aten.abs: (_call("tl.abs"), "result"),
    aten.exp: (_call("tl.exp"), "result"),
    aten.exp2: (_call("tl.exp2"), "result"),
    aten.log: (_call("tl.log"), "result"),
    aten.log2: (_call("tl.log2"), "result"),
    aten.log1p: (lambda a, n: f"tl.log(1.0 + {a[0]})", "result"),
    aten.expm1: (lambda a, n: f"(tl.exp({a[0]}) - 1.0)", "result"),
    aten.sqrt: (_call("tl.sqrt"), "result"),
    aten.rsqrt: (_call("tl.rsqrt"), "result"),
    aten.reciprocal: (lambda a, n: f"(1.0 / {a[0]})", "result"),
    aten.sin: (_call("tl.sin"), "result"),
    aten.cos: (_call("tl.cos"), "result"),
    aten.tanh: (lambda a, n: _tanh(a[0]), "result"),
    aten.sigmoid: (_call("tl.sigmoid"), "result"),
    aten.erf: (_call("tl.erf"), "result"),
    aten.relu: (lambda a, n: f"tl.where({a[0]} < 0, 0, {a[0]})", "result"),  # NaN stays
    aten.gelu: (_gelu, "result"),
    aten.silu: (lambda a, n: f"({a[0]} * tl.sigmoid({a[0]}))", "result"),
    aten.maximum: (lambda a, n: f"tl.maximum({a[0]}, {a[1]}, {NAN})", "result"),
    aten.minimum: (lambda a, n: f"tl.minimum({a[0]}, {a[1]}, {NAN})", "result"),
    aten.clamp: (_clamp, "result"),
    aten.clamp_min: (lambda a, n: f"tl.maximum({a[0]}, {a[1]}, {NAN})", "result"),
    aten.clamp_max: (lambda a, n: f"tl.minimum({a[0]}, {a[1]}, {NAN})", "result"),
    aten.pow: (_pow, "result"),
    aten.square: (lambda a, n: f"({a[0]} * {a[0]})", "result"),
    aten.eq: (_binary("=="), "promote"),
    aten.ne: (_binary("!="), "promote"),
    aten.lt: (_binary("<"), "promote"),
    aten.le: (_binary("<="), "promote"),
    aten.gt: (_binary(">"), "promote"),
    aten.ge: (_binary(">="), "promote"),
    aten.logical_not: (lambda a, n: f"({a[0]} == 0)", "none"),
    aten.logical_and: (lambda a, n: f"(({a[0]} != 0) & ({a[1]} != 0))", "none"),
    aten.logical_or: (lambda a, n: f"(({a[0]} != 0) | ({a[1]} != 0))", "none"),
    aten.logical_xor: (lambda a, n: f"(({a[0]} != 0) ^ ({a[1]} != 0))", "none"),
    aten.bitwise_and: (lambda a, n: _bitwise(f"({a[0]} & {a[1]})", n), "result"),
    aten.bitwise_or: (lambda a, n: _bitwise(f"({a[0]} | {a[1]})", n), "result"),
    aten.bitwise_xor: (lambda a, n: _bitwise(f"({a[0]} ^ {a[1]})", n), "result"),
    aten.bitwise_not: (lambda a, n: _bitwise_not(a[0], n), "result"),
    aten.where: (lambda a, n: f"tl.where({a[0]}, {a[1]}, {a[2]})", "result"),
    aten.masked_fill: (lambda a, n: f"tl.where({a[1]}, {a[2]}, {a[0]})", "result"),
    aten.clone: (lambda a, n: a[0], "result"),
    aten._to_copy: (_cast, "none"),
    prims.convert_element_type: (_cast, "none"),
    aten.threshold_backward: (lambda a, n: f"tl.where({a[1]} <= {a[2]}, 0.0, {a[0]})", "result"),
    aten.gelu_backward: (_gelu_backward, "result"),
    aten.sigmoid_backward: (lambda a, n: f"({a[0]} * {a[1]} * (1.0 - {a[1]}))", "result"),
    aten.tanh_backward: (lambda a, n: f"({a[0]} * (1.0 - {a[1]} * {a[1]}))", "result"),
    aten.silu_backward: (
        lambda a, n: f"({a[0]} * tl.sigmoid({a[1]}) * (1.0 + {a[1]} * (1.0 - tl.sigmoid({a[1]}))))",
        "result",
    ),
    aten.native_dropout_backward: (lambda a, n: f"({a[0]} * {a[1]} * {a[2]})", "result"),
}

PHILOX = PHILOX_UNIFORM.overloadpacket
"""``kitsune.philox_uniform``: computed in the kernel from its seed and each element's index."""
NOT_IN_REDUCTIONS = (aten.cat, aten.index)
"""Pointwise ops whose lowering needs a pointwise kernel's element positions (random
numbers need only each element's row-major index, which a reduction kernel has too)."""
REDUCTIONS = {aten.sum: "sum", aten.mean: "mean", aten.amax: "amax", aten.amin: "amin"}
"""Reduction overload packets and the accumulator each uses."""

def classify(node: fx.Node) -> tuple[Optional[str], str]:
    """``("pointwise"|"reduction"|"view"|"source", "")`` for a fusable node (cats and
    gathers count as pointwise), else ``(None, why not)``."""
    if node.op != "call_function":
        return None, f"{node.op} node"
    op = packet(node)
    name = getattr(node.target, "__name__", str(node.target))
    if op is None:
        return None, f"{name} is not an ATen op"
    if is_identity_view(node):
        return "view", ""
    if is_view(node):
        return None, (f"{name} reorders or broadcasts elements: it stays an ATen view and "
                      "kernels read it through its strides")
    if op is PHILOX:
        seed = node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
        ok = isinstance(seed, torch.Tensor) and seed.dim() == 0 and seed.dtype == torch.int64
        return ("pointwise", "") if ok else (None, "philox_uniform of a seed that is not a 0-d int64")
    if op in POINTWISE:
        return _check_pointwise(node, op)
    if op in REDUCTIONS:
        return _check_reduction(node)
    if op is aten.index and has_symbolic_size(node):
        return None, (f"{DYNAMIC_SHAPES}: {name} with symbolic sizes (kernels prove a "
                      "gather's indices in range against static sizes only): it runs as its "
                      "ATen op")
    if op is aten.cat:
        return _check_cat(node)
    if op is aten.index:
        return _check_gather(node)
    if op in index_sources.SOURCES:
        why = index_sources.problem(node)
        if why and why.startswith(DYNAMIC_SHAPES):  # keeps the prefix first
            return None, why.replace(": ", f": {name}: ", 1)
        return (None, f"{name}: {why}") if why else ("source", "")
    if torch.Tag.nondeterministic_seeded in getattr(node.target, "tags", ()):
        return None, f"{name} is a random op"
    return None, f"{name} is a library call or an op without a Triton lowering"


def _check_pointwise(node: fx.Node, op: Any) -> tuple[Optional[str], str]:
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor):
        return None, "result is not a single tensor"
    if op is aten.div and node.kwargs.get("rounding_mode") is not None:
        return None, "div with a rounding mode has no lowering"
    if op is aten._to_copy and set(node.kwargs) - {"dtype", "layout", "device"}:
        return None, "_to_copy with memory_format/pin_memory changes more than the dtype"
    if op is aten._to_copy and node.kwargs.get("device") not in (None, value.device):
        return None, "_to_copy across devices"
    if op is aten.pow and isinstance(node.args[0], fx.Node) and not isinstance(
            node.args[1], (int, float)):
        return None, "pow of a tensor to tensor powers has no lowering"
    if op is aten.pow and not isinstance(node.args[0], fx.Node) and not (
            isinstance(node.args[0], (int, float)) and node.args[0] > 0
            and value.dtype == torch.float32):
        return None, "pow of a number to tensor powers: only a positive number, into float32"
    if op is aten.clone and node.kwargs.get("memory_format") not in (None, torch.preserve_format,
                                                                     torch.contiguous_format):
        return None, "clone to a memory format is a layout change"
    return "pointwise", ""


def _check_cat(node: fx.Node) -> tuple[Optional[str], str]:
    value = node.meta.get("val")
    parts = node.args[0] if node.args else ()
    if not isinstance(value, torch.Tensor) or not all(isinstance(p, fx.Node) for p in parts):
        return None, "cat of something other than tensors"
    for part in parts:
        part_value = part.meta.get("val")
        if not isinstance(part_value, torch.Tensor) or part_value.dim() != value.dim():
            return None, f"cat input {part.name} has another rank (a legacy empty tensor)"
        if size(part_value.numel()) == 0:
            return None, f"cat input {part.name} is empty"
    return "pointwise", ""


def _check_gather(node: fx.Node) -> tuple[Optional[str], str]:
    base, indices = node.args[0], node.args[1]
    value = base.meta.get("val") if isinstance(base, fx.Node) else None
    if not isinstance(value, torch.Tensor) or not isinstance(node.meta.get("val"), torch.Tensor):
        return None, "index of something other than a tensor"
    if len(indices) != value.dim() or not all(isinstance(i, fx.Node) for i in indices):
        return None, "index that leaves dims unindexed (only full gathers are fused)"
    for dim, index in enumerate(indices):
        if index.meta["val"].dtype not in (torch.int64, torch.int32):
            return None, f"index by a {index.meta['val'].dtype} tensor (a mask: data-dependent shape)"
        bounds = index_sources.value_range(index)
        size = value.shape[dim]
        if bounds is None:
            return None, (f"index {index.name} comes from data: eager raises on an "
                          "out-of-range index, a kernel's masked load would not")
        if bounds[0] < -size or bounds[1] >= size:
            return None, f"index {index.name} may be out of range ({bounds} for size {size})"
    return "pointwise", ""


def cat_dim(node: fx.Node) -> int:
    """The non-negative dim an ``aten.cat`` node concatenates along."""
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return dim % node.meta["val"].dim()


def _check_reduction(node: fx.Node) -> tuple[Optional[str], str]:
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor) or not node.args:
        return None, "result is not a single tensor"
    source = node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
    if not isinstance(source, torch.Tensor):
        return None, "reduction input has no tensor metadata"
    exact_sum = (REDUCTIONS[packet(node)] == "sum" and value.dtype in (torch.int32, torch.int64)
                 and not source.dtype.is_floating_point and not source.dtype.is_complex)
    if not exact_sum and not (value.dtype.is_floating_point and source.dtype.is_floating_point):
        return None, (f"{value.dtype} reduction (only floating point, or an integer sum, "
                      "accumulates in a kernel)")
    if node.kwargs.get("dtype") not in (None, value.dtype):
        return None, "reduction with a dtype argument"
    reduce_size = math.prod(size(source.shape[d]) for d in reduced_dims(node))
    if reduce_size == 0 and size(value.numel()) > 0:
        return None, "reduction over an empty dim (eager decides its identity value)"
    return "reduction", ""


def reduced_dims(node: fx.Node) -> tuple[int, ...]:
    """The sorted, non-negative dims a reduction node reduces over (all when none given)."""
    source = node.args[0].meta["val"]
    rank = source.dim()
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return tuple(range(rank))
    if isinstance(dims, int):
        dims = [dims]
    return tuple(sorted({d % rank for d in dims})) if rank else ()


def lower_pointwise(node: fx.Node, args: list[str]) -> str:
    """The Triton expression for a pointwise node, given its operand expressions."""
    lowering, _ = POINTWISE[packet(node)]
    return lowering(args, node)


BOOL_OPERANDS = {aten.where: 0, aten.masked_fill: 1}
"""Operand positions that stay boolean whatever the result dtype."""


def cast_mode(node: fx.Node) -> str:
    """How operands are cast before a pointwise node's lowering (see :data:`POINTWISE`)."""
    return POINTWISE[packet(node)][1]
