"""The reduction kernel's passes: per-row values, passes over the columns, accumulators.

A reduction kernel defines each reduction's per-row value in a pass over the row's
columns (one pass in registers when the row fits a block, else a loop per reduction) and
the per-row values that follow from them at the top level. :class:`ReductionBody` is mixed
into the kernel writer of :mod:`kitsune_backend.codegen.source`, which supplies ``line``,
``fresh``, ``emit``, ``lookup``, ``load``, ``open_columns``, ``region``, ``config``,
``looped``, ``rmask`` and ``top``.
"""

from __future__ import annotations

import torch.fx as fx

from . import ops
from .symbolic import is_symbolic


class ReductionBody:
    """Reduction-kernel methods of the kernel writer (see the module docstring)."""

    def needed(self, targets: list[fx.Node]) -> tuple[list[fx.Node], list[fx.Node]]:
        """(full nodes, row nodes) of the region that ``targets`` depend on, in graph order."""
        seen: set[fx.Node] = set()
        stack = [t for t in targets if t in self.region.context]
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            if ops.packet(node) in ops.REDUCTIONS:
                continue
            stack.extend(a for a in node.all_input_nodes if a in self.region.context)
        order = [n for n in self.region.nodes if n in seen]
        full = [n for n in order if self.region.context[n] == "full"]
        return full, [n for n in order if self.region.context[n] == "row"]

    def ensure_rows(self, targets: list[fx.Node]) -> None:
        """Define, at the top level, the per-row values ``targets`` need."""
        self.define_rows(self.needed(targets)[1])

    def define_rows(self, rows: list[fx.Node]) -> None:
        """Define per-row values at the top level (reductions are defined by :meth:`reduce`)."""
        for node in rows:
            if node not in self.top and ops.packet(node) not in ops.REDUCTIONS:
                self.emit(node, self.top)

    def phase(self, targets: list[fx.Node]) -> dict:
        """Open a pass over the columns and define the full-size ``targets`` in it."""
        full, rows = self.needed(targets)
        self.define_rows(rows)
        if self.looped and is_symbolic(self.region.columns):
            # a while loop: Triton's interpreter cannot take a size argument as a range bound
            self.line("roff = 0")
            self.line(f"while roff < {self.region.columns}:")
            self.depth += 1
            scope: dict = {}
            self.open_columns("roff")
        elif self.looped:
            self.line(f"for roff in range(0, {self.region.columns}, {self.config.rblock}):")
            self.depth += 1
            scope: dict = {}
            self.open_columns("roff")
        else:
            scope = self.top
        for node in full:
            self.emit(node, scope)
        return scope

    def close_loop(self) -> None:
        """End the pass over the columns :meth:`phase` opened (a while loop steps first)."""
        if self.looped and is_symbolic(self.region.columns):
            self.line(f"roff += {self.config.rblock}")
        self.depth = 1

    def reduce(self, node: fx.Node) -> None:
        """Define the per-row value of reduction ``node``."""
        kind = ops.REDUCTIONS[ops.packet(node)]
        source = node.args[0]
        want = ops.compute_dtype(node.meta["val"].dtype)
        neutral = {"sum": "0.0", "mean": "0.0", "amax": '-float("inf")', "amin": 'float("inf")'}[kind]
        if not node.meta["val"].dtype.is_floating_point:
            neutral = "0"  # an integer sum (ops allows no other integer reduction)
        block = f"[{self.config.xblock}, {self.config.rblock}]"
        if self.looped:
            acc = self.fresh("acc")
            self.line(f"{acc} = tl.full({block}, {neutral}, {want})")
        scope = self.phase([source] if source in self.region.context else [])
        if source in self.region.context:
            value = ops.held_as_eager(self.lookup(source, scope), source.meta["val"].dtype,
                                      node.meta["val"].dtype)
        else:
            value = self.load(source, "full", self.region.shape, scope)
        value = f"tl.broadcast_to({value}.to({want}), {block})"
        if self.rmask:
            value = f"tl.where(rmask, {value}, {neutral})"
        combine = {"sum": "tl.sum", "mean": "tl.sum", "amax": "tl.max", "amin": "tl.min"}[kind]
        var = self.fresh("r")
        if self.looped:
            if kind in ("sum", "mean"):
                self.line(f"{acc} = {acc} + {value}")
            else:
                pick = "maximum" if kind == "amax" else "minimum"
                self.line(f"{acc} = tl.{pick}({acc}, {value}, {ops.NAN})")
            self.close_loop()
            value = acc
        columns = self.region.columns
        scale = f" / {columns if is_symbolic(columns) else float(columns)!r}" if kind == "mean" else ""
        self.line(f"{var} = {combine}({value}, 1)[:, None]{scale}  # {node.name}")
        if kind in ("amax", "amin"):  # tl.max/tl.min skip NaN; eager returns it
            self.line(f"{var} = tl.where(tl.max(({value} != {value}).to(tl.int8), 1)[:, None] > 0, "
                      f'float("nan"), {var})')
        self.top[node] = var
