"""``max-autotune``: time a few launch configs of a kernel on the device, keep the fastest.

Runs at a kernel's first call on CUDA (never during CUDA graph capture). The winner is
remembered in ``<cache_dir>/autotune.json`` under the heuristic source's hash and the
device name, so a later process takes it without timing again.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Sequence

import torch

from . import cache
from .heuristics import LaunchConfig, candidates
from .source import KernelSource

_LOCK = threading.Lock()


def _table_path(cache_dir: str) -> str:
    return os.path.join(cache_dir, "autotune.json")


def _read(cache_dir: str) -> dict[str, Any]:
    try:
        with open(_table_path(cache_dir)) as f:
            table = json.load(f)
        return table if isinstance(table, dict) else {}
    except (OSError, ValueError):
        return {}


def tune(kernel: Any, args: Sequence[torch.Tensor], out: Sequence[torch.Tensor]) -> tuple[KernelSource, Any]:
    """The fastest (source, launchable kernel) among ``kernel``'s candidate configs."""
    from triton.testing import do_bench

    base: KernelSource = kernel.generated
    key = f"{cache.source_hash(base.source)}:{torch.cuda.get_device_name((*args, *out)[0].device)}"
    remembered = _read(kernel.cache_dir).get(key)
    if kernel.variant is None:
        return base, kernel._launch_fn
    if remembered is not None:
        generated = kernel.variant(LaunchConfig(**remembered))
        return generated, kernel._load(generated)
    best = None
    for config in candidates(base.config, base.columns):
        generated = kernel.variant(config)
        fn = kernel._load(generated)
        ms = do_bench(lambda: kernel._launch(fn, generated, args, out), warmup=5, rep=20)
        if best is None or ms < best[0]:
            best = (ms, generated, fn)
    _, generated, fn = best
    with _LOCK:
        table = _read(kernel.cache_dir)
        table[key] = {"xblock": generated.config.xblock, "rblock": generated.config.rblock,
                      "num_warps": generated.config.num_warps}
        os.makedirs(kernel.cache_dir, exist_ok=True)
        with open(_table_path(kernel.cache_dir), "w") as f:
            json.dump(table, f, indent=1)
    return generated, fn

