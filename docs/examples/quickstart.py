"""Compile a small model with kitsune, train one step, and print what kitsune did."""

import torch

import kitsune_backend
from kitsune_backend.models import MLP

torch.manual_seed(0)
model = MLP((784, 256, 128, 10))
compiled = torch.compile(model, backend="kitsune")

x = torch.randn(32, 784)
loss = compiled(x).sum()
loss.backward()  # the backward graph is compiled here

session = kitsune_backend.last_compile()
print(kitsune_backend.explain(session))

# the same model with settings for this compile only
torch._dynamo.reset()
compiled = torch.compile(model, backend="kitsune", options={"num_streams": 2, "debug": True})
compiled(x)
