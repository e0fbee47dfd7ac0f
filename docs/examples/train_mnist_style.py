"""Train an MNIST-shaped MLP with an unchanged loop: only the optimizer line says kitsune.

Runs on the CPU (random 28x28 "digits" with a learnable rule, so the loss falls) and on a
GPU alike. On the CPU, kitsune's generated kernels run under ``TRITON_INTERPRET=1``.
"""

import torch

import kitsune_backend
from kitsune_backend.models import MLP

torch.manual_seed(0)
device = "cuda" if torch.cuda.is_available() else "cpu"
images = torch.randn(512, 1, 28, 28, device=device)
labels = images.flatten(1)[:, :10].argmax(1)  # a rule the model can learn

model = MLP((784, 256, 128, 10)).to(device)
optimizer = kitsune_backend.KitsuneOptimizer(torch.optim.Adam, model.parameters(), lr=1e-3,
                                             model=model)  # the one changed line
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.5)

losses = []
for step in range(30):
    batch = slice(64 * (step % 8), 64 * (step % 8 + 1))
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    losses.append(loss.item())

stats = optimizer.get_stats()
print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
print({k: stats[k] for k in ("update", "buckets", "parameters_compiled", "generated_kernels",
                             "update_kernels_per_step", "captured")})
