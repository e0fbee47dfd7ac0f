"""Quick fusion bandwidth check on a GPU (not a test): kitsune kernels vs copy and Inductor.

Run: ``KITSUNE_TEST_GPU=1 python3 tests/gpu/fusion_bench.py``. Prints one line per case:
time, fraction of copy bandwidth (bytes read + written once), and Inductor's time.
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F
from triton.testing import do_bench

sys.path.insert(0, "tests")
from tests.test_codegen import fused  # noqa: E402


def chain(x):
    """Ten pointwise ops."""
    y = x * 2 + 1
    y = torch.relu(y) - 0.5
    y = torch.sigmoid(y) * y
    y = torch.exp(-y) / 3
    return torch.tanh(y).abs()


def main() -> None:
    """Time each case and print the table."""
    n = 1 << 26
    cases = [("pointwise chain 2^26 fp32", chain, (torch.randn(n, device="cuda"),))]
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(8192, 4096, device="cuda", dtype=dtype)
        w = torch.randn(4096, device="cuda", dtype=dtype)
        b = torch.randn(4096, device="cuda", dtype=dtype)
        name = str(dtype).replace("torch.", "")
        cases.append((f"softmax 8192x4096 {name}", lambda t: torch.softmax(t, -1), (x,)))
        cases.append((f"layer_norm 8192x4096 {name}",
                      lambda t, w, b: F.layer_norm(t, (4096,), w, b), (x, w, b)))
    for name, fn, inputs in cases:
        x = inputs[0]
        nbytes = 2 * x.numel() * x.element_size()
        copy_ms = do_bench(lambda: torch.empty_like(x).copy_(x), rep=200)
        start = time.perf_counter()
        gm, kernels = fused(fn, *inputs)
        gm(*inputs)
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - start
        torch.testing.assert_close(gm(*inputs), fn(*inputs), rtol=2e-2, atol=2e-2)
        ours = do_bench(lambda: gm(*inputs), rep=200)
        start = time.perf_counter()
        inductor = torch.compile(fn)
        inductor(*inputs)
        torch.cuda.synchronize()
        ind_compile_s = time.perf_counter() - start
        theirs = do_bench(lambda: inductor(*inputs), rep=200)
        print(f"{name:28s} kernels={len(kernels)} kitsune {ours * 1e3:8.1f} us "
              f"({copy_ms / ours:5.1%} of copy {nbytes / copy_ms / 1e6:6.0f} GB/s) | "
              f"inductor {theirs * 1e3:8.1f} us ({copy_ms / theirs:5.1%}) | "
              f"first call kitsune {compile_s:5.2f} s inductor {ind_compile_s:5.2f} s "
              f"| {[k.generated.config.describe() for k in kernels]}", flush=True)


def resnet() -> None:
    """ResNet-18 training step: first-call time and kernels per graph (run twice: the
    second process finds the kernel cache warm)."""
    import kitsune_backend
    from kitsune_backend import models

    model = models.ResNet18().cuda()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    start = time.perf_counter()
    compiled = torch.compile(model, backend="kitsune")
    compiled(x).sum().backward()
    torch.cuda.synchronize()
    total = time.perf_counter() - start
    session = kitsune_backend.last_compile()
    print(f"resnet18 train first call {total:.2f} s; " + "; ".join(
        f"{r.name}: {r.stats['kernels']} kernels, {r.stats['fused_regions']} fused, "
        f"{r.compile_seconds:.2f} s compile, fallback={r.fallback_reason!r}"
        for r in session.records), flush=True)


if __name__ == "__main__":
    if "kitsune" not in torch._dynamo.list_backends(exclude_tags=()):
        import kitsune_backend

        torch._dynamo.register_backend(kitsune_backend.kitsune, name="kitsune")
    resnet() if sys.argv[1:] == ["resnet"] else main()
