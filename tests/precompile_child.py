"""Run by tests/test_precompile.py in a fresh process WITHOUT ``TRITON_INTERPRET``: a CPU-only
stand-in for a GPU process, to exercise the real compile path with no GPU.

Triton compiles for a GPU target with the ``ptxas`` it ships, so no device is needed; only
Triton's *driver* (which the launcher asks for the current device and target) must be
faked. This script installs a fake driver that says "an sm_90 GPU", builds real generated
kernels with the fusion pass, and prints one JSON line of facts for the test to check.

    python tests/precompile_child.py worker <tmp dir>     the worker function alone
    python tests/precompile_child.py pool <tmp dir>       precompile() through the pool
"""

from __future__ import annotations

import json
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.fx.experimental.proxy_tensor import make_fx  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.driver import DriverBase  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402

from kitsune_backend.codegen import compile_worker, precompile  # noqa: E402
from kitsune_backend.codegen.kernel import FusedKernel  # noqa: E402
from kitsune_backend.config import Config  # noqa: E402
from kitsune_backend.passes.decompositions import decomposition_table  # noqa: E402
from kitsune_backend.codegen import lowering  # noqa: E402
from kitsune_backend.passes import fusion  # noqa: E402
from kitsune_backend.process import PROCESS  # noqa: E402
from kitsune_backend.ir import PassContext  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)


class FakeDriver(DriverBase):
    """Says "one sm_90 GPU" to Triton's launcher; launching anything would fail."""

    @classmethod
    def is_active(cls) -> bool:
        return True

    def map_python_to_cpp_type(self, ty: str) -> str:
        return ty

    def get_current_target(self) -> GPUTarget:
        return TARGET

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")

    def get_benchmarker(self):
        raise NotImplementedError

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0


def model(x, y):
    """Three fusable regions around two matmuls: three generated kernels."""
    a = F.gelu(x * 2 + 1)
    b = torch.softmax(a @ y, -1)
    return torch.tanh(b @ y.t() - a) * 0.5


def build_kernels(cache_dir: str) -> list[FusedKernel]:
    """Real generated kernels, made by the fusion pass from a fake-traced CPU graph."""
    inputs = (torch.randn(16, 32), torch.randn(32, 32))
    gm = make_fx(model, decomposition_table=decomposition_table(), tracing_mode="fake")(*inputs)
    ctx = PassContext(config=Config(kernel_cache_dir=cache_dir, compile_workers=0),
                      graph_name="t", example_inputs=inputs, process=PROCESS)
    fusion.why_not_on = lambda device: ""  # the kernels are for the (fake) GPU
    fusion.fuse(gm, ctx)
    lowering.generate_kernels(gm, ctx)
    return [n.target for n in gm.graph.nodes if isinstance(n.target, FusedKernel)]


def cache_entries(folder: str) -> list[str]:
    """Triton's cache: one folder per compiled (or looked-up) key."""
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def compile_in_this_process(kernels: list[FusedKernel]) -> list[bool]:
    """What the first launch does before running: compile (or load) each kernel; returns
    the cache-hit flag Triton reports for each."""
    hits: list[bool] = []
    knobs.compilation.listener = lambda **kw: hits.append(kw["cache_hit"])
    try:
        for kernel in kernels:
            g = kernel.generated
            kernel._launch_fn.warmup(*[s.dtype for s in (*g.inputs, *g.outputs)],
                                     grid=(g.grid,), num_warps=g.config.num_warps)
    finally:
        knobs.compilation.listener = None
    return hits


def main(what: str, tmp: str) -> dict:
    """Run one scenario; the facts it found."""
    triton_cache = os.path.join(tmp, "triton")
    os.environ["TRITON_CACHE_DIR"] = triton_cache
    driver.set_active(FakeDriver())
    kernels = build_kernels(os.path.join(tmp, "kitsune"))
    facts: dict = {"kernels": len(kernels), "cuda_initialized": False}
    if what == "worker":
        facts["warm_up"] = compile_worker.warm_up([TARGET.backend, TARGET.arch, TARGET.warp_size])
        facts["cache_dir_after_warm_up"] = os.environ.get("TRITON_CACHE_DIR") == triton_cache
        facts["entries_after_warm_up"] = len(cache_entries(triton_cache))
        kernel = kernels[0]
        request = precompile.capture_request(kernel)
        facts["captured"] = request is not None
        reply = compile_worker.compile_request(request)
        facts["reply"] = {k: v for k, v in reply.items() if k != "seconds"}
        facts["entries_after_worker"] = len(cache_entries(triton_cache))
        facts["request_after_worker"] = precompile.capture_request(kernel) is not None
        facts["hits"] = compile_in_this_process([kernel])
    else:
        few = precompile.precompile(kernels, Config(compile_workers=2), torch.device("cuda"),
                                    PROCESS.compile_pool)  # 3 kernels: below the threshold
        facts["few"] = {"skipped": few.skipped, "pool_size": PROCESS.compile_pool.size}
        precompile.MIN_KERNELS_FOR_WORKERS = 2  # so that this model's 3 kernels use workers
        report = precompile.precompile(kernels, Config(compile_workers=2), torch.device("cuda"),
                                       PROCESS.compile_pool)
        facts["report"] = report.stats()
        facts["pool_target"] = PROCESS.compile_pool.target
        facts["failures"] = report.failures
        facts["skipped"] = report.skipped
        before = cache_entries(triton_cache)
        facts["hits"] = compile_in_this_process(kernels)
        facts["new_entries"] = len(set(cache_entries(triton_cache)) - set(before))
        again = precompile.precompile(kernels, Config(compile_workers=2), torch.device("cuda"),
                                      PROCESS.compile_pool)
        facts["again"] = again.stats()
    facts["cuda_initialized"] = torch.cuda.is_initialized()
    return facts


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
