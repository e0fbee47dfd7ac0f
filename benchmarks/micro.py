"""Memory-bound micro-benchmarks: how close a kernel gets to the copy bandwidth.

Each case moves a known number of bytes (its inputs read once, its output written once:
what a perfectly fused kernel would move). Achieved bandwidth is those bytes over the
median time per call; it is reported as a fraction of the device-to-device copy bandwidth
measured in the same run (read + write bytes of a large ``copy_``).
"""

from __future__ import annotations

import dataclasses
import sys
import time
import traceback
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from kitsune_backend import timing

from .backends import Backend
from .checks import compare_observations
from .measure import describe_error, reset_compile_state


def pointwise_chain(x: torch.Tensor) -> torch.Tensor:
    """Ten pointwise ops; a fused kernel reads ``x`` once and writes once."""
    y = x * 1.5
    y = y + 0.25
    y = torch.sin(y)
    y = y * y
    y = y - 0.5
    y = y.abs()
    y = -y
    y = torch.exp(y)
    y = y + x
    return torch.tanh(y)


def softmax_last(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension."""
    return torch.softmax(x, dim=-1)


def layer_norm_last(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last dimension with weight and bias."""
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps=1e-5)


@dataclasses.dataclass(frozen=True)
class MicroCase:
    """One function, input shape and dtype; ``quick_shape`` is the CPU smoke run's shape."""

    name: str
    fn: Callable
    shape: tuple[int, ...]
    quick_shape: tuple[int, ...]
    dtype: torch.dtype

    def inputs(self, device: torch.device, quick: bool) -> tuple[torch.Tensor, ...]:
        """Fresh normal inputs (x, and weight/bias for layer_norm) from a fixed seed."""
        shape = self.quick_shape if quick else self.shape
        generator = torch.Generator().manual_seed(7)
        x = torch.randn(shape, generator=generator)
        tensors = [x]
        if self.fn is layer_norm_last:
            tensors += [torch.randn(shape[-1], generator=generator) for _ in range(2)]
        return tuple(t.to(device=device, dtype=self.dtype) for t in tensors)


CASES: tuple[MicroCase, ...] = (
    MicroCase("pointwise10_fp32", pointwise_chain, (2**26,), (2**14,), torch.float32),
    MicroCase("softmax_fp32", softmax_last, (8192, 4096), (64, 256), torch.float32),
    MicroCase("softmax_bf16", softmax_last, (8192, 4096), (64, 256), torch.bfloat16),
    MicroCase("layer_norm_fp32", layer_norm_last, (8192, 4096), (64, 256), torch.float32),
    MicroCase("layer_norm_bf16", layer_norm_last, (8192, 4096), (64, 256), torch.bfloat16),
)


def select_cases(spec: str) -> list[MicroCase]:
    """Cases named in a comma list; a name matches exactly or as a prefix (``softmax``).
    ``all`` is every case, ``none`` or empty is none."""
    if spec.strip() in ("", "none"):
        return []
    if spec.strip() == "all":
        return list(CASES)
    chosen = []
    for word in (w.strip() for w in spec.split(",") if w.strip()):
        matches = [c for c in CASES if c.name == word or c.name.startswith(word)]
        if not matches:
            raise ValueError(f"unknown micro-benchmark {word!r}; known: "
                             + ", ".join(c.name for c in CASES))
        chosen += [c for c in matches if c not in chosen]
    return chosen


def copy_bandwidth(device: torch.device, quick: bool, iters: int, warmup: int) -> float:
    """Device-to-device copy bandwidth in GB/s (1e9 bytes), counting read + write."""
    numel = 2**20 if quick else 2**28
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    stats = timing.time_per_call(lambda: dst.copy_(src), iters, warmup, device=device)
    return 2 * src.nbytes / (stats["median"] * 1e-3) / 1e9


def ideal_bytes(inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    """Bytes a perfect kernel moves: every input read once, the output written once."""
    return sum(t.nbytes for t in inputs) + output.nbytes


def run_micro(
    cases: list[MicroCase],
    backends: list[Backend],
    device: torch.device,
    quick: bool,
    iters: int,
    warmup: int,
    kernel_counts: str = "yes",
    on_row: Callable[[dict], None] = lambda row: None,
) -> dict[str, Any]:
    """Copy bandwidth, then every case under every backend: ``{"copy_gbps", "rows"}``.

    ``kernel_counts``: profile each row for its kernel count after timing it ("yes"), not
    at all ("no"), or instead of timing it ("only")."""
    copy_gbps = copy_bandwidth(device, quick, max(iters, 10), max(warmup, 2))
    print(f"[bench] copy bandwidth {copy_gbps:.0f} GB/s", file=sys.stderr, flush=True)
    rows = []
    for case in cases:
        inputs = case.inputs(device, quick)
        reference = None
        for backend in backends:
            row = _measure_case(case, backend, inputs, device, (iters, warmup, kernel_counts),
                                reference, copy_gbps)
            if backend.name == "eager":
                reference = row.pop("_output", None)
            row.pop("_output", None)
            rows.append(row)
            on_row(row)
    return {"copy_gbps": copy_gbps, "rows": rows}


def _measure_case(case, backend, inputs, device, how, reference, copy_gbps) -> dict:
    row: dict[str, Any] = {
        "case": case.name, "backend": backend.name, "dtype": str(case.dtype).replace("torch.", ""),
        "shape": list(inputs[0].shape), "status": "pending", "note": "", "max_abs_err": None,
        "tol_ratio": None, "first_call_s": None, "median_ms": None, "p10_ms": None,
        "p90_ms": None, "gbps": None, "fraction_of_copy": None, "kernels": None,
    }
    print(f"[bench] micro {case.name} / {backend.name} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        reset_compile_state(device)
        fn = backend.wrap(case.fn) if backend.compile_kwargs else case.fn
        seconds, output = timing.first_call_seconds(lambda: fn(*inputs), device)
        row["first_call_s"] = seconds
        _check(row, backend, output, reference)
        iters, warmup, kernel_counts = how
        if kernel_counts != "only":
            stats = timing.time_per_call(lambda: fn(*inputs), iters, warmup, device=device)
            gbps = ideal_bytes(inputs, output) / (stats["median"] * 1e-3) / 1e9
            row.update(median_ms=stats["median"], p10_ms=stats["p10"], p90_ms=stats["p90"],
                       gbps=gbps, fraction_of_copy=gbps / copy_gbps)
        else:
            for _ in range(warmup):  # what timing's warm-up would have done: replays
                fn(*inputs)
        if kernel_counts != "no":
            row["kernels"] = timing.count_kernels(lambda: fn(*inputs), device)["kernels"]
        row["_output"] = output.detach().cpu()
    except Exception as exc:
        row.update(status="error", note=describe_error(exc))
        traceback.print_exc(file=sys.stderr)
    finally:
        row["seconds"] = round(time.perf_counter() - start, 3)
        reset_compile_state(device)
    return row


def _check(row: dict, backend: Backend, output: torch.Tensor,
           reference: Optional[torch.Tensor]) -> None:
    if backend.name == "eager":
        row.update(status="ok", note="reference")
    elif reference is None:
        row.update(status="mismatch", note="no eager reference to compare with")
    else:
        ok, max_abs, ratio, detail, _ = compare_observations({"out": output.detach().cpu()},
                                                             {"out": reference})
        row.update(status="ok" if ok else "mismatch", max_abs_err=max_abs, tol_ratio=ratio)
        if not ok:
            row["note"] = f"differs from eager: {detail}"

