"""Helpers that build FX graphs for the pass tests: traced ATen graphs, the fusion pass run
and lowered on one, stream-planning contexts and random DAGs, and random view programs."""

from __future__ import annotations

import dataclasses

import networkx as nx
import torch
from hypothesis import strategies as st
from torch.fx.experimental.proxy_tensor import make_fx

from kitsune_backend.codegen.kernel import FusedKernel
from kitsune_backend.codegen.lowering import generate_kernels
from kitsune_backend.config import Config
from kitsune_backend.passes.decompositions import decomposition_table
from kitsune_backend.ir import PassContext
from kitsune_backend.passes.fusion import fuse
from kitsune_backend.process import PROCESS


def fused(fn, *inputs, cache_dir=""):
    """``fn`` traced to ATen and run through the fusion and kernels stages; returns (graph,
    kernels)."""
    gm = make_fx(fn, decomposition_table=decomposition_table(), tracing_mode="fake")(*inputs)
    ctx = PassContext(config=Config(kernel_cache_dir=cache_dir), graph_name="t",
                      example_inputs=inputs, process=PROCESS)
    fuse(gm, ctx)
    generate_kernels(gm, ctx)
    gm.recompile()
    kernels = [n.target for n in gm.graph.nodes if isinstance(n.target, FusedKernel)]
    return gm, kernels


@dataclasses.dataclass
class CudaContext(PassContext):
    """A context that says the graph runs on CUDA, to plan streams for a CPU-traced graph."""

    @property
    def on_cuda(self) -> bool:
        return True


def trace(fn, *shapes):
    """An ATen graph of ``fn`` with fake-tensor metadata, and example inputs."""
    inputs = [torch.randn(s) for s in shapes]
    return make_fx(fn, tracing_mode="fake")(*inputs), inputs


def branchy(x, w1, w2, w3, w4):
    return torch.cat([torch.sigmoid(torch.relu(x @ w)) for w in (w1, w2, w3, w4)], dim=1)


def context(inputs, cls=CudaContext, **config):
    return cls(config=Config(**config), graph_name="forward", example_inputs=inputs)


def branchy_graph():
    return trace(branchy, (64, 256), *[(256, 256)] * 4)


@st.composite
def dags(draw, max_nodes=14):
    """A random DAG over 0..n-1 (edges go forward), its order and a cost per node."""
    n = draw(st.integers(1, max_nodes))
    dag = nx.DiGraph()
    dag.add_nodes_from(range(n))
    for v in range(1, n):
        preds = draw(st.lists(st.integers(0, v - 1), max_size=3, unique=True))
        dag.add_edges_from((u, v) for u in preds)
    cost = {v: draw(st.floats(1.0, 50.0)) for v in range(n)}
    return dag, list(range(n)), cost


def order_graph(plan):
    """The happens-before graph the runtime actually enforces: stream order, events, joins."""
    hb = nx.DiGraph()
    hb.add_nodes_from(plan.order)
    last = {}
    for v in plan.order:
        s = plan.stream[v]
        if s in last:
            hb.add_edge(last[s], v)
        last[s] = v
        hb.add_edges_from((u, v) for u in plan.waits[v])
    return hb


UNARY = [torch.sin, torch.sigmoid, lambda t: t * 1.5 - 0.25, torch.tanh]


def build(steps):
    """The program: ``f(x)`` running ``steps``, returning every value made (as copies of
    views, so outputs do not alias each other)."""

    def f(x):
        values = [torch.neg(torch.neg(x))]
        for kind, i, params in steps:
            v = values[i]
            if kind == "unary":
                values.append(UNARY[params[0]](v))
            elif kind == "combine":
                values.append(v * 0.5 + values[params[0]].mean())
            elif kind == "as_strided":
                values.append(torch.as_strided(v, *params))
            elif kind == "strided_copy":
                values.append(torch.as_strided_copy(v, *params) + 1)
            elif kind == "narrow":
                values.append(v.narrow(0, *params))
            elif kind == "transpose":
                values.append(v.t())
            elif kind == "inplace":
                fresh = torch.sigmoid(v)
                fresh.mul_(params[0] + 0.5)
                values.append(fresh)
            else:  # in-place through a view of a fresh intermediate
                fresh = torch.cos(v)
                fresh.t()[: max(1, fresh.shape[-1] // 2)].add_(params[0] + 1.0)
                values.append(fresh)
        return [torch.neg(torch.neg(v)) for v in values[1:]]

    return f
