"""Which ATen ops keep the rows of a batch apart, and where each one puts the batch.

A tensor carries the batch ``s`` (a size symbol) in one dim, of size ``outer * s * inner``
with ``outer`` and ``inner`` free of ``s`` (:class:`Rows`): row ``b`` of the batch owns the
entries ``b * inner .. (b + 1) * inner - 1`` of each of the ``outer`` blocks of that dim.
An op keeps rows apart when each row of its output is computed from the same row of its
inputs (and from tensors that carry no batch). :func:`rows_after` gives, for one node, where
its output carries the batch, from where its inputs do, or raises :class:`NotSeparable`
with the reason; ops it does not know raise too, when they touch the batch.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, Callable, Optional

import sympy
import torch
import torch.fx as fx

from ..graph_utils import is_mutating, op_overload


class NotSeparable(Exception):
    """An op mixes rows of the batch (or may): its message says which and how."""


@dataclasses.dataclass(frozen=True)
class Rows:
    """Where a tensor carries the batch: dim ``dim`` of size ``outer * s * inner``."""

    dim: int
    outer: sympy.Expr
    inner: sympy.Expr

    def same_split(self, other: "Rows") -> bool:
        """True when both split their batch dim the same way (rows line up entry by entry)."""
        return _equal(self.outer, other.outer) and _equal(self.inner, other.inner)


RowsOf = Callable[[Any], Any]  # an argument -> its Rows, None, or a tuple of those


def expr_of(size: Any) -> sympy.Expr:
    """A size (int or ``SymInt``) as a sympy expression."""
    return size.node.expr if isinstance(size, torch.SymInt) else sympy.Integer(int(size))


def _equal(a: sympy.Expr, b: sympy.Expr) -> bool:
    return sympy.cancel(a - b) == 0


def free_factor(expr: sympy.Expr, s: sympy.Symbol) -> Optional[sympy.Expr]:
    """``expr`` when it is a polynomial free of ``s`` (a product of sizes), else None."""
    expr = sympy.cancel(expr)
    if s in expr.free_symbols or sympy.fraction(expr)[1] != 1:
        return None
    return expr


def batch_dims(value: torch.Tensor, s: sympy.Symbol) -> list[int]:
    """The dims of ``value`` whose size depends on ``s``."""
    return [d for d, n in enumerate(value.shape) if s in expr_of(n).free_symbols]


def place(node: fx.Node, value: Any, s: sympy.Symbol, outer: sympy.Expr,
          inner: sympy.Expr) -> Optional[Rows]:
    """The :class:`Rows` of ``value`` (an output of ``node``), whose one dim of size
    ``outer * s * inner`` carries the batch; None when no dim depends on ``s``."""
    if not isinstance(value, torch.Tensor):
        return None
    dims = batch_dims(value, s)
    if not dims:
        return None
    if len(dims) > 1 or not _equal(expr_of(value.shape[dims[0]]), outer * s * inner):
        raise NotSeparable(f"node {node.name} ({node.target}) spreads the batch {s} over "
                           f"its output's shape {tuple(value.shape)}")
    return Rows(dims[0], outer, inner)


def new_rows(node: fx.Node, value: torch.Tensor, s: sympy.Symbol) -> Optional[Rows]:
    """The :class:`Rows` of a value made without batch inputs (every row alike, a
    ``full`` or an ``expand``): batch-major, in its one dim that depends on ``s``."""
    dims = batch_dims(value, s)
    if not dims:
        return None
    coefficient = free_factor(expr_of(value.shape[dims[0]]) / s, s)
    if coefficient is None:
        raise NotSeparable(f"node {node.name} ({node.target}) makes a size "
                           f"{value.shape[dims[0]]} that is no multiple of the batch {s}")
    return place(node, value, s, sympy.Integer(1), coefficient)


def _outputs(node: fx.Node) -> list[Any]:
    value = node.meta.get("val")
    return list(value) if isinstance(value, (tuple, list)) else [value]


def _wrap(node: fx.Node, found: list[Optional[Rows]]) -> Any:
    return tuple(found) if isinstance(node.meta.get("val"), (tuple, list)) else found[0]


def _dims(node: fx.Node, pos: int, name: str, ndim: int) -> set[int]:
    """The dims named by ``node``'s argument ``pos``/``name`` (an int or a list; none given:
    every dim), made non-negative for a tensor of ``ndim`` dims."""
    value = node.args[pos] if len(node.args) > pos else node.kwargs.get(name)
    if value is None or value == []:
        return set(range(ndim))
    values = value if isinstance(value, (list, tuple)) else [value]
    return {int(d) % max(ndim, 1) for d in values}


def keep(node: fx.Node, rows_of: RowsOf, s: sympy.Symbol,
         touched: Callable[[fx.Node, int], set[int]] = lambda node, ndim: set()) -> Any:
    """The rows of an op that reads its inputs' batch rows one by one, along dims
    ``touched(node, ndim)`` of each input (never the batch dim): its outputs carry the
    batch with the inputs' split. With several batch inputs, their batch dims line up (as
    broadcasting lines dims up, from the right) and split alike."""
    carrying = [(arg, rows) for arg in node.all_input_nodes
                if isinstance(rows := rows_of(arg), Rows)]
    outputs = _outputs(node)
    if not carrying:
        return _wrap(node, [new_rows(node, v, s) if isinstance(v, torch.Tensor) else None
                            for v in outputs])
    first = carrying[0][1]
    for arg, rows in carrying:
        ndim = arg.meta["val"].dim()
        if rows.dim in touched(node, ndim):
            raise NotSeparable(f"node {node.name} ({node.target}) works across the batch "
                               f"dim {rows.dim} of {arg.name}")
        if len(carrying) > 1 and (rows.dim - ndim != first.dim - carrying[0][0].meta["val"].dim()
                                  or not rows.same_split(first)):
            raise NotSeparable(f"node {node.name} ({node.target}) lines the batch of "
                               f"{arg.name} up against another dim of {carrying[0][0].name}")
    found = [place(node, v, s, first.outer, first.inner) for v in outputs]
    if not isinstance(node.meta.get("val"), (tuple, list)) and found[0] is None:
        raise NotSeparable(f"node {node.name} ({node.target}) reduces the batch away")
    return _wrap(node, found)


def along(pos: int, name: str) -> Callable[[fx.Node, int], set[int]]:
    """``touched`` for an op that works along the dims of its argument ``pos``/``name``
    (a reduction, a softmax, a cat): every dim when none are given."""
    return lambda node, ndim: _dims(node, pos, name, ndim)


def last(count: Callable[[fx.Node], int]) -> Callable[[fx.Node, int], set[int]]:
    """``touched`` for an op over the last ``count(node)`` dims (a layer norm, a pool)."""
    return lambda node, ndim: set(range(max(ndim - count(node), 0), ndim))


def all_but_first(node: fx.Node, ndim: int) -> set[int]:
    """``touched`` for a per-sample op (a convolution, a group norm, a fused encoder
    layer): the batch must be dim 0."""
    return set(range(1, ndim))


def view(node: fx.Node, rows_of: RowsOf, s: sympy.Symbol) -> Optional[Rows]:
    """The rows of a reshape: it keeps rows apart when as many entries come before the
    batch's (and after them) in the output's row-major order as in the input's."""
    source = node.args[0]
    rows = rows_of(source)
    if rows is None:
        return keep(node, rows_of, s)
    shape_in, shape_out = source.meta["val"].shape, node.meta["val"].shape
    before = sympy.prod([expr_of(n) for n in shape_in[:rows.dim]]) * rows.outer
    dims = batch_dims(node.meta["val"], s)
    if len(dims) == 1:
        d = dims[0]
        outer = free_factor(before / sympy.prod([expr_of(n) for n in shape_out[:d]]), s)
        whole = free_factor(expr_of(shape_out[d]) / s, s)
        inner = None if outer is None or whole is None else free_factor(whole / outer, s)
        if inner is not None:
            return place(node, node.meta["val"], s, outer, inner)
    raise NotSeparable(f"node {node.name} ({node.target}) reshapes {tuple(shape_in)} to "
                       f"{tuple(shape_out)}, which splits or interleaves the batch {s}")


def matmul(node: fx.Node, rows_of: RowsOf, s: sympy.Symbol) -> Optional[Rows]:
    """The rows of ``mm``/``bmm`` (and ``addmm``/``baddbmm``, whose bias broadcasts
    against the product): the batch may be in the rows of the first factor, the columns of
    the second, or the leading (group) dim of both, never in the dim they contract."""
    a, b = node.args[-2:]
    ra, rb = rows_of(a), rows_of(b)
    where = (ra.dim if ra else None, rb.dim if rb else None)
    allowed = {(None, None), (0, None), (None, 1)} if node.meta["val"].dim() == 2 \
        else {(None, None), (0, 0), (1, None), (None, 2)}
    if where not in allowed:
        raise NotSeparable(f"node {node.name} ({node.target}) contracts over the batch {s} "
                           f"(dims {where} of {a.name}, {b.name} carry it)")
    return keep(node, rows_of, s)


def batch_norm(node: fx.Node, rows_of: RowsOf, s: sympy.Symbol) -> Any:
    """The rows of a batch norm: in training it computes statistics over the batch."""
    name = node.target.overloadpacket.__name__
    training = name != "_native_batch_norm_legit_no_training" and \
        bool(node.args[3 if node.target._overloadname == "no_stats" else 5])
    if training and rows_of(node.args[0]) is not None:
        raise NotSeparable(f"node {node.name} ({node.target}) is a batch norm in training: "
                           f"its statistics are taken over the batch {s}")
    return keep(node, rows_of, s)


def slice_(node: fx.Node, rows_of: RowsOf, s: sympy.Symbol) -> Any:
    """The rows of ``slice``: along another dim, or the whole batch dim (``x[:]``)."""
    rows = rows_of(node.args[0])
    value = node.args[0].meta["val"]
    dim = int(node.args[1] if len(node.args) > 1 else 0) % value.dim()
    if rows is not None and rows.dim == dim and (
            tuple(node.meta["val"].shape) != tuple(value.shape) or
            (node.args[4] if len(node.args) > 4 else 1) != 1):
        raise NotSeparable(f"node {node.name} ({node.target}) slices the batch dim {dim}")
    return keep(node, rows_of, s)


def getitem(node: fx.Node, rows_of: RowsOf, s: sympy.Symbol) -> Any:
    """One output of a node with several."""
    found = rows_of(node.args[0])
    return found[node.args[1]] if isinstance(found, tuple) else None


def _keep_along(pos: int, name: str) -> Callable[[fx.Node, RowsOf, sympy.Symbol], Any]:
    touched = along(pos, name)
    return lambda node, rows_of, s: keep(node, rows_of, s, touched)


def _keep_last(count: Callable[[fx.Node], int]) -> Callable[[fx.Node, RowsOf, sympy.Symbol], Any]:
    touched = last(count)
    return lambda node, rows_of, s: keep(node, rows_of, s, touched)


def _per_sample(node: fx.Node, rows_of: RowsOf, s: sympy.Symbol) -> Any:
    return keep(node, rows_of, s, all_but_first)


_ALONG_1 = ("sum", "mean", "amax", "amin", "prod", "any", "all", "argmax", "argmin", "max",
            "min", "var", "std", "var_mean", "std_mean", "logsumexp", "_softmax", "softmax",
            "_log_softmax", "log_softmax", "cumsum", "cumprod", "sort", "cat",
            "unbind", "select", "narrow", "index_select", "gather")
_ALONG_2 = ("linalg_vector_norm", "_softmax_backward_data", "_log_softmax_backward_data",
            "topk", "split", "split_with_sizes", "chunk")
_KEEP = ("clone", "_to_copy", "alias", "detach", "lift_fresh_copy", "contiguous", "where",
         "masked_fill", "native_dropout", "permute", "transpose", "t", "expand", "squeeze",
         "unsqueeze", "stack", "embedding", "full", "zeros", "ones", "empty", "empty_strided",
         "new_zeros", "new_ones", "new_empty", "new_full", "zeros_like", "ones_like",
         "empty_like", "full_like")
_LAST_2 = ("max_pool2d_with_indices", "avg_pool2d", "_adaptive_avg_pool2d",
           "adaptive_avg_pool2d", "upsample_nearest2d", "upsample_bilinear2d",
           "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
           "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
           "scaled_dot_product_attention")
_PER_SAMPLE = ("convolution", "native_group_norm", "_transformer_encoder_layer_fwd",
               "_native_multi_head_attention")
_BATCH_NORMS = ("native_batch_norm", "_native_batch_norm_legit",
                "_native_batch_norm_legit_functional", "_native_batch_norm_legit_no_training",
                "cudnn_batch_norm")

RULES: dict[str, Callable[[fx.Node, RowsOf, sympy.Symbol], Any]] = {
    **{name: _keep_along(1, "dim") for name in _ALONG_1},
    **{name: _keep_along(2, "dim") for name in _ALONG_2},
    "flip": _keep_along(1, "dims"), "roll": _keep_along(2, "dims"),
    **dict.fromkeys(_KEEP, keep),
    **dict.fromkeys(_LAST_2, _keep_last(lambda node: 2)),
    "native_layer_norm": _keep_last(lambda node: len(node.args[1])),
    **dict.fromkeys(_PER_SAMPLE, _per_sample),
    **dict.fromkeys(_BATCH_NORMS, batch_norm),
    **dict.fromkeys(("mm", "addmm", "bmm", "baddbmm"), matmul),
    **dict.fromkeys(("view", "_unsafe_view", "reshape", "view_copy"), view),
    "slice": slice_,
}
"""ATen op (overload packet name) -> its rule; pointwise ops (``torch.Tag.pointwise``) keep
rows apart by broadcasting (:func:`keep`). ``view`` by dtype is not a reshape: it has no
rule."""


def _carries(rows: Any) -> bool:
    return isinstance(rows, Rows) or (isinstance(rows, tuple) and any(rows))


def _reads_size(item: Any, s: sympy.Symbol) -> bool:
    value = item.meta.get("val") if isinstance(item, fx.Node) else item
    return isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)) and \
        s in value.node.expr.free_symbols


SIZE_ARGUMENTS = frozenset({"size", "shape", "stride", "sizes", "split_size", "split_sizes",
                            "output_size", "N", "HxW"})
"""Arguments that are sizes: what an op does with them shows in its output's shape, which
the rules check. ``slice``'s ``start`` and ``end`` count too (a slice that depends on the
batch size changes its output's shape); ``select``'s index or ``narrow``'s start do not."""


def check_values(node: fx.Node, overload: torch._ops.OpOverload, s: sympy.Symbol) -> None:
    """Raise when ``node`` reads the batch size as a value (``x / s0``, ``full(.., s0)``,
    ``select(x, 1, s0 - 1)``), not as a size: padding would change that value."""
    schema = overload._schema.arguments
    sizes = SIZE_ARGUMENTS | ({"start", "end"} if overload.overloadpacket.__name__ == "slice"
                              else set())
    pairs = [*zip(schema, node.args), *((a, node.kwargs[a.name]) for a in schema
                                         if a.name in node.kwargs)]
    for argument, value in pairs:
        if argument.name in sizes:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if _reads_size(item, s):
                raise NotSeparable(f"node {node.name} ({overload}) reads the batch size {s} "
                                   f"as a value (argument {argument.name})")


def rows_after(node: fx.Node, rows_of: RowsOf, s: sympy.Symbol) -> Any:
    """Where ``node``'s output carries the batch ``s`` (:class:`Rows`, None, or a tuple of
    those for an op with several outputs), given ``rows_of`` its inputs; raises
    :class:`NotSeparable` when it mixes rows, or may."""
    if node.target is operator.getitem:
        return getitem(node, rows_of, s)
    overload = op_overload(node)
    if overload is not None:
        check_values(node, overload, s)
    if isinstance(node.meta.get("val"), (torch.SymInt, torch.SymFloat, torch.SymBool, int)):
        return None  # size arithmetic: its uses are checked
    outputs = _outputs(node)
    if not any(_carries(rows_of(a)) for a in node.all_input_nodes) and not any(
            isinstance(v, torch.Tensor) and batch_dims(v, s) for v in outputs):
        return None  # no row of the batch goes in or comes out
    if overload is None:
        raise NotSeparable(f"node {node.name} ({node.target}) is no ATen op")
    if is_mutating(node):
        raise NotSeparable(f"node {node.name} ({overload}) writes the batch into an input")
    name = overload.overloadpacket.__name__
    rule = RULES.get(name)
    if name == "view" and overload._overloadname != "default":
        rule = None
    if rule is None and torch.Tag.pointwise in overload.tags:
        rule = keep
    if rule is None:
        raise NotSeparable(f"node {node.name} ({overload}) is not known to keep the rows of "
                           f"the batch {s} apart")
    return rule(node, rows_of, s)
