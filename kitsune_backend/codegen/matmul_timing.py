"""Timing a generated matmul-plus-bias kernel against cuBLAS, the way a model runs them.

A model's weights are cold in L2, and a small-M GEMM's speed depends on how well it
streams them: timed on one operand set, hot in L2, a GEMM can look faster than it is inside
the model. So each candidate runs over enough copies of random operands to fill twice the L2
cache, back to back, and the best of ``ROUNDS`` rounds counts. Results are kept per layout
for the process: a model's repeated layers are timed once. Only device time counts
(:func:`_per_call_us`): timed from the host, cuBLAS's two launches looked twice as slow
as they are inside a CUDA graph.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import unset_fake_temporarily

from ..config import Config
from .cache import KernelCache, triton_binaries_under
from .compile_pool import CompilePool
from .kernel import FusedKernel
from .matmul import MatmulTile, matmul_bias_source
from .precompile import precompile
from .source import TensorSpec

ROUNDS = 5
MAX_COPIES = 32
MAX_BYTES = 1 << 28
"""At most this much memory (256 MiB) holds the operand copies: twice the L2 of a large GPU
(50 MB) fits, and the caching allocator keeps what it held."""
SLEEP_CYCLES = 10_000_000
"""Device clock cycles of the sleep before each round (about 5 ms at 2 GHz): longer than
the host takes to queue ``MAX_COPIES`` calls of either kind."""


@dataclasses.dataclass(frozen=True)
class Timings:
    """Microseconds per call: cuBLAS ``mm`` plus the add, and the kernel with each tile."""

    cublas: float
    tiles: dict[MatmulTile, float]


def time_choices(specs: tuple[TensorSpec, ...], dot_precision: str,
                 candidates: tuple[MatmulTile, ...], config: Config, device: torch.device,
                 kernel_cache: KernelCache, pool: CompilePool) -> Timings:
    """Time cuBLAS and each candidate tile (kernels with ``dot_precision``) on operands
    laid out as ``specs`` (a, b, bias, out) on CUDA ``device``; the kernels load through
    ``kernel_cache`` and compile on ``pool``'s workers."""
    layouts = tuple((s.shape, s.stride, s.dtype) for s in specs)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _timed(layouts, dot_precision, candidates, config, index, kernel_cache, pool)


@functools.lru_cache(maxsize=None)
def _timed(layouts: tuple, dot_precision: str, candidates: tuple[MatmulTile, ...],
           config: Config, device_index: int, kernel_cache: KernelCache,
           pool: CompilePool) -> Timings:
    device = torch.device("cuda", device_index)
    specs = [TensorSpec(f"in{i}", *layout) for i, layout in enumerate(layouts)]
    kernels = [FusedKernel(matmul_bias_source((), *specs, tile, dot_precision), fx.Graph(),
                           config.cache_dir, kernel_cache, device=device) for tile in candidates]
    precompile(kernels, config, device, pool)
    with unset_fake_temporarily(), torch.no_grad(), torch.cuda.device(device), \
            triton_binaries_under(config.cache_dir):
        sets = _operand_sets(specs, device)
        scratch = [torch.empty_like(out) for *_, out in sets]

        def cublas(i: int) -> None:
            a, b, bias, out = sets[i]
            torch.add(torch.mm(a, b, out=scratch[i]), bias, out=out)

        def generated(kernel: FusedKernel) -> Callable[[int], None]:
            return lambda i: kernel._launch(kernel._launch_fn, kernel.generated,
                                            sets[i][:3], sets[i][3:])

        tiles = {tile: _per_call_us(generated(k), len(sets), device)
                 for tile, k in zip(candidates, kernels)}
        return Timings(_per_call_us(cublas, len(sets), device), tiles)


def _operand_sets(specs: list[TensorSpec], device: torch.device) -> list[tuple]:
    """Random operands (never zeros) laid out as ``specs``: as many sets as fill twice the
    L2 cache, within ``MAX_COPIES`` and ``MAX_BYTES``."""
    spans = [_span(s) for s in specs]
    size = max(1, sum(n * s.dtype.itemsize for n, s in zip(spans, specs)))
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    copies = max(1, min(MAX_COPIES, math.ceil(2 * l2 / size), MAX_BYTES // size))
    return [tuple(torch.randn(n, device=device).to(s.dtype).as_strided(s.shape, s.stride)
                  for n, s in zip(spans, specs)) for _ in range(copies)]


def _span(spec: TensorSpec) -> int:
    if not all(spec.shape):
        return 0
    return 1 + sum((n - 1) * s for n, s in zip(spec.shape, spec.stride))


def _per_call_us(run: Callable[[int], None], copies: int, device: torch.device) -> float:
    """Device microseconds per ``run(i)``, over ``copies`` calls back to back: best of
    ``ROUNDS`` after one warm-up pass (which also compiles and picks cuBLAS's kernels).

    Each round first queues a sleep on the device, long enough for the host to queue all
    the calls behind it, so that the time between the two events is the device's alone: in
    a model the calls replay from a CUDA graph, where launching costs the host nothing.
    """
    for i in range(copies):
        run(i)
    torch.cuda.synchronize(device)
    best = math.inf
    for _ in range(ROUNDS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(SLEEP_CYCLES)
        start.record()
        for i in range(copies):
            run(i)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) * 1e3 / copies)
    return best
