"""``python -m benchmarks serving``: a serving loop whose batch size changes at every call.

The loop of the changing-shapes issue: a 2-layer ``nn.TransformerEncoder`` (d_model 256, 8
heads, feed-forward 1024, batch-first, no dropout) in eval mode under ``no_grad``, called
with sequences of 32 tokens at batch sizes drawn from a seeded RNG in 1..64, 120 calls. In
one process, for each backend (eager; Inductor ``reduce-overhead``, each call after
``torch.compiler.cudagraph_mark_step_begin()``; kitsune), after ``torch._dynamo.reset()``:

1. the first loop over the sizes, each call synchronized: its wall time, compiles included
   (``first_loop_s``);
2. the same loop again, each call timed alone by CUDA events on the CPU's clock on a CPU
   run (``p50_ms``, ``p90_ms``): what a caller waits per request once warm;
3. every output of both loops against eager's on the same input (fp32, TF32 off);
4. for kitsune, the CUDA graphs captured over every graph Dynamo compiled, the padded calls
   and the graphs compiled.

``--quick`` shrinks the model (d_model 32, 4 heads, sequence 8) and the loop (16 calls,
sizes 1..8): a smoke run on the CPU, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from typing import Any, Callable, Optional

FULL = {"d_model": 256, "heads": 8, "ffn": 1024, "seq": 32, "max_batch": 64, "calls": 120}
QUICK = {"d_model": 32, "heads": 4, "ffn": 64, "seq": 8, "max_batch": 8, "calls": 16}
BACKENDS = ("eager", "inductor-ro", "kitsune")
TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}


def add_parser(sub: Any) -> None:
    """The ``serving`` subcommand's arguments."""
    parser = sub.add_parser("serving", help="a serving loop of changing batch sizes: first-"
                                            "loop time, per-call p50, captures")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help=f"comma list of {', '.join(BACKENDS)} (eager always runs: the "
                             "reference); inductor-ro needs CUDA")
    parser.add_argument("--calls", type=int, default=None, help="calls per loop (default 120)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batch sizes")
    parser.add_argument("--quick", action="store_true", help="smoke run: a tiny model")
    parser.add_argument("--json", dest="json_path", help="write the results JSON here")


def cmd_serving(args: argparse.Namespace) -> int:
    """Run the loop under each backend; exit 1 when an output differs from eager's."""
    if args.device == "cpu" or (args.device is None and not _cuda_available()):
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shape = dict(QUICK if args.quick else FULL)
    shape["calls"] = args.calls or shape["calls"]
    names = ["eager"] + [n for n in (b.strip() for b in args.backends.split(","))
                         if n and n != "eager"]
    unknown = sorted(set(names) - set(BACKENDS))
    if unknown:
        raise SystemExit(f"unknown backend(s) {', '.join(unknown)}; known: {', '.join(BACKENDS)}")
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        results = run_serving(names, device, shape, args.seed)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    print(format_rows(results["rows"]))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if any(not r["matches_eager"] for r in results["rows"]) else 0


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def run_serving(names: list[str], device: Any, shape: dict, seed: int) -> dict:
    """Every backend's row (``names`` starts with eager) and the run's settings."""
    import torch

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(shape["d_model"], shape["heads"], shape["ffn"],
                                             dropout=0.0, batch_first=True)
    model = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).to(device).eval()
    sizes = random.Random(seed).choices(range(1, shape["max_batch"] + 1), k=shape["calls"])
    generator = torch.Generator(device=device).manual_seed(seed)
    inputs = [torch.randn(n, shape["seq"], shape["d_model"], device=device,
                          generator=generator) for n in sizes]
    with torch.no_grad():
        expected = [model(x) for x in inputs]
    rows = []
    for name in names:
        if name == "inductor-ro" and device.type != "cuda":
            rows.append({"backend": name, "status": "skipped", "note": "needs CUDA",
                         "matches_eager": True})
            continue
        print(f"[serving] {name} ...", file=sys.stderr, flush=True)
        rows.append(_row(name, model, inputs, expected, device))
    return {"settings": {**shape, "seed": seed, "device": str(device),
                         "torch": torch.__version__, "distinct_sizes": len(set(sizes))},
            "rows": rows}


def _compiled(name: str, model: Any) -> Callable:
    import torch

    import kitsune_backend

    if name == "eager":
        return model
    if name == "kitsune":
        return torch.compile(model, backend=kitsune_backend.kitsune)
    compiled = torch.compile(model, mode="reduce-overhead")

    def marked(x: Any) -> Any:
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(x)

    return marked


def _row(name: str, model: Any, inputs: list, expected: list, device: Any) -> dict:
    """One backend: first loop (compiles included), timed loop, outputs against eager's."""
    import torch

    import kitsune_backend
    from kitsune_backend.timing import summarize, synchronize

    torch._dynamo.reset()
    kitsune_backend.clear_history()
    call = _compiled(name, model)
    worst = 0.0
    matches = True
    with torch.no_grad():
        began = time.perf_counter()
        for x, e in zip(inputs, expected):
            matches &= _close(call(x), e)
            synchronize(device)
        first_loop_s = time.perf_counter() - began
        samples = []
        for x, e in zip(inputs, expected):
            ms, out = _timed(call, x, device)
            samples.append(ms)
            matches &= _close(out, e)
            worst = max(worst, float((out - e).abs().max()))
    stats = summarize(samples)
    row = {"backend": name, "status": "ok", "note": "", "matches_eager": bool(matches),
           "max_abs_err": worst, "first_loop_s": first_loop_s, "p50_ms": stats["median"],
           "p90_ms": stats["p90"], "samples_ms": samples}
    if name == "kitsune":
        records = [r for s in kitsune_backend.history() for r in s.records]
        row.update(graphs=len(records),
                   captures=sum(r.runtime_info.get("cuda_graph_captures", 0) for r in records),
                   padded_calls=sum(r.runtime_info.get("padded_calls", 0) for r in records),
                   kernels=sum(len(r.kernels) for r in records))
    return row


def _timed(call: Callable, x: Any, device: Any) -> tuple[float, Any]:
    """Milliseconds of one call, alone (CUDA events on CUDA, the host clock on the CPU)."""
    import torch

    from kitsune_backend.timing import synchronize

    synchronize(device)
    if device.type != "cuda":
        began = time.perf_counter()
        out = call(x)
        return (time.perf_counter() - began) * 1e3, out
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    out = call(x)
    end.record()
    end.synchronize()
    return start.elapsed_time(end), out.clone()


def _close(actual: Any, expected: Any) -> bool:
    import torch

    return actual.shape == expected.shape and bool(
        torch.allclose(actual, expected, **TOLERANCE))


def format_rows(rows: list[dict]) -> str:
    """One line per backend, and each one's p50 against reduce-overhead's where measured."""
    reference: Optional[float] = next((r["p50_ms"] for r in rows if r["backend"] ==
                                       "inductor-ro" and r["status"] == "ok"), None)
    header = (f"{'backend':<12} {'check':<9} {'first loop s':>12} {'p50 ms':>8} {'p90 ms':>8} "
              f"{'vs RO':>6}  captures / padded calls / graphs")
    lines = [header, "-" * len(header)]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"{r['backend']:<12} {r['status']:<9} {r['note']}")
            continue
        ratio = f"{reference / r['p50_ms']:.2f}" if reference else "-"
        extra = (f"{r['captures']} / {r['padded_calls']} / {r['graphs']}"
                 if "captures" in r else "")
        lines.append(f"{r['backend']:<12} {'ok' if r['matches_eager'] else 'MISMATCH':<9} "
                     f"{r['first_loop_s']:>12.2f} {r['p50_ms']:>8.3f} {r['p90_ms']:>8.3f} "
                     f"{ratio:>6}  {extra}")
    return "\n".join(lines)
