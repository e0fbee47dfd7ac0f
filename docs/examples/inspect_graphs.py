"""Look at the graphs kitsune recorded: code after every stage, declines, stats, drawings."""

import torch

import kitsune_backend
from kitsune_backend import inspection
from kitsune_backend.dot import GraphvizNotFoundError
from kitsune_backend.models import MLP

model = MLP((16, 32, 4))
compiled = torch.compile(model, backend="kitsune")
compiled(torch.randn(8, 16)).sum().backward()

session = kitsune_backend.last_compile()
forward, backward = session.forward, session.backward

for stage, code in inspection.graphs(forward).items():  # "input", then every pass
    print(f"---- forward after {stage}")
    print(code)

for decline in backward.declines:  # every "no", with the stage that said it
    print(decline.stage, decline.node, decline.reason)

print(backward.stats)  # nodes_in, nodes_out, kernels, fused_regions, streams_used, ...

dot_text = inspection.graph_dot(forward, "memory_plan")  # Graphviz DOT, no extra packages
graph = inspection.graph_networkx(forward, "memory_plan")  # a networkx.DiGraph
try:
    inspection.graph_svg(forward, "memory_plan", path="forward.svg")
except GraphvizNotFoundError as exc:  # SVG needs Graphviz's `dot` program
    print(exc)
