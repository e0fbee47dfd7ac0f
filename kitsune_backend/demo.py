"""``python -m kitsune_backend.demo``: compile built-in models with kitsune, check them
against eager, show what kitsune did and, on a GPU, how fast it is against eager and Inductor.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F

from . import explain, last_compile
from .models import MLP, BranchyHeads


def check_inference(device: torch.device) -> tuple[torch.nn.Module, torch.Tensor]:
    """Compile the 8-head branchy model for inference and compare with eager; prints both."""
    torch.manual_seed(0)
    model = BranchyHeads(dim=512, heads=8, hidden=512).to(device).eval()
    compiled = torch.compile(model, backend="kitsune")
    with torch.no_grad():
        for _ in range(3):
            x = torch.randn(32, 512, device=device)
            expected, actual = model(x), compiled(x)
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    error = (actual - expected).abs().max().item()
    print(f"branchy model (8 heads, input (32, 512)) on {device}: matches eager "
          f"(max abs difference {error:.2e})")
    print(explain(last_compile()))
    return model, x


def check_training(device: torch.device) -> None:
    """Three training steps of an MLP compiled with kitsune against eager: losses and grads."""
    torch.manual_seed(0)
    eager = MLP().to(device)
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin, backend="kitsune")
    for step in range(3):
        x = torch.randn(64, 784, device=device)
        y = torch.randint(0, 10, (64,), device=device)
        loss_e = F.cross_entropy(eager(x), y)
        loss_c = F.cross_entropy(compiled(x), y)
        loss_e.backward()
        loss_c.backward()
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-4, atol=1e-5)
        for p_e, p_c in zip(eager.parameters(), twin.parameters()):
            torch.testing.assert_close(p_c.grad, p_e.grad, rtol=1e-4, atol=1e-5)
            p_e.grad = p_c.grad = None
    print(f"MLP 784-256-128-10 training on {device}: 3 steps, losses and gradients match eager "
          f"(last loss {loss_c.item():.4f})")
    print(explain(last_compile()))


def time_backends(model: torch.nn.Module, x: torch.Tensor, iters: int) -> None:
    """Per-call time of eager, Inductor, Inductor reduce-overhead and kitsune, same process."""
    from .timing import time_per_call

    backends = {
        "eager": model,
        "inductor": torch.compile(copy.deepcopy(model)),
        "inductor reduce-overhead": torch.compile(copy.deepcopy(model), mode="reduce-overhead"),
        "kitsune": torch.compile(copy.deepcopy(model), backend="kitsune"),
    }
    times = {}
    with torch.no_grad():
        for name, fn in backends.items():
            times[name] = 1e3 * time_per_call(lambda: fn(x), iters=iters, warmup=10)["median"]
    print(f"\nper-call time, median of {iters} calls (branchy model, batch 32):")
    for name, us in times.items():
        print(f"  {name:26s} {us:9.1f} us   {times['eager'] / us:5.2f}x eager   "
              f"{times['inductor'] / us:5.2f}x inductor")


def main(argv: list[str] | None = None) -> None:
    """Run the demo; ``--device`` picks cpu/cuda (default: cuda when available)."""
    parser = argparse.ArgumentParser(prog="python -m kitsune_backend.demo", description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=200, help="timed calls per backend (GPU)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    model, x = check_inference(device)
    check_training(device)
    if device.type == "cuda":
        time_backends(model, x, args.iters)
    else:
        print("\n(no GPU: timings are skipped; they mean something only on a CUDA device)")


if __name__ == "__main__":
    main()
