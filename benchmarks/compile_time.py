"""``python -m benchmarks compile-time``: how long the first training step takes to compile.

The issue's targets: compiling a ResNet-18 training step with kitsune takes at most a third
of Inductor's first-call time, measured in the same process; with a warm kernel cache, at
most one second per graph. Measured in two fresh child processes sharing one new temporary
folder for every cache (kitsune's ``kernel_cache_dir``, ``TRITON_CACHE_DIR``,
``TORCHINDUCTOR_CACHE_DIR``):

1. cold: one eager step first (CUDA, cuBLAS and cuDNN initialise outside both numbers) and
   a tiny ``backend="eager"`` compile (Dynamo's own start-up likewise), then the first
   forward+backward step under ``aot_eager`` (Dynamo and AOTAutograd tracing with no
   compiler: the floor both backends pay, reported so that each one's own cost shows),
   under Inductor (default mode), and under kitsune, each synchronized, with
   ``torch._dynamo.reset()`` between them;
2. warm: a new process, same (now filled) caches: kitsune's first step again, and each
   graph's ``compile_seconds`` from :func:`kitsune_backend.history`.

``--quick`` is a smoke run: the mlp model, and on the CPU no Inductor (it compiles C++ for
minutes there) and kernels in Triton's interpreter, so its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLD_RATIO_TARGET = 1 / 3
WARM_GRAPH_TARGET_S = 1.0
CHILD_TIMEOUT_S = 600


def add_parser(sub: Any) -> None:
    """The ``compile-time`` subcommand's arguments."""
    parser = sub.add_parser("compile-time", help="first-step compile time, cold and warm, "
                                                 "kitsune against Inductor")
    parser.add_argument("--model", default=None,
                        help="a training workload (default resnet18; quick: mlp)")
    parser.add_argument("--workers", type=int, default=None,
                        help="kitsune compile_workers (default: the config's default)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: mlp; on the CPU no Inductor; not a measurement")
    parser.add_argument("--json", dest="json_path", help="write the results JSON here")


def cmd_compile_time(args: argparse.Namespace) -> int:
    """Run both child processes, print the table, write the JSON; exit 1 if a child failed."""
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = args.model or ("mlp" if args.quick else "resnet18")
    inductor = not (args.quick and device == "cpu")
    with tempfile.TemporaryDirectory(prefix="kitsune_compile_time_") as folder:
        env = _child_env(folder, device, args.workers)
        cold = _child(["cold", model, device, str(int(inductor))], env)
        warm = _child(["warm", model, device, "0"], env) if cold.get("ok") else {
            "ok": False, "error": "not run: the cold run failed"}
    results = summarize(model, device, args.workers, cold, warm)
    print(format_table(results))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(results, f, indent=1)
    return 0 if cold.get("ok") and warm.get("ok") else 1


def _child_env(folder: str, device: str, workers: Optional[int]) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["KITSUNE_KERNEL_CACHE_DIR"] = os.path.join(folder, "kitsune")
    env["TRITON_CACHE_DIR"] = os.path.join(folder, "triton")
    env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(folder, "inductor")
    if workers is not None:
        env["KITSUNE_COMPILE_WORKERS"] = str(workers)
    if device == "cpu":
        env.setdefault("TRITON_INTERPRET", "1")
    return env


def _child(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run one phase in a fresh process; its JSON line (or why there is none)."""
    command = [sys.executable, "-m", "benchmarks.compile_time", *argv]
    try:
        done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {CHILD_TIMEOUT_S} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        return {"ok": False, "error": f"exit code {done.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])


def _first_step(module: Any, inputs: tuple, device: Any) -> float:
    """Seconds for one synchronized forward+backward of ``module`` (compiles if compiled)."""
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    start = time.perf_counter()
    module(*inputs).backward()
    sync()
    return time.perf_counter() - start


def _graphs() -> list[dict[str, Any]]:
    """Every graph kitsune compiled in this process: its compile time and precompile stats."""
    import kitsune_backend

    found = []
    for session in kitsune_backend.history():
        for record in session.records:
            stats = record.stats
            found.append({"graph": record.name, "compile_seconds": round(record.compile_seconds, 3),
                          "kernels": stats.get("fused_regions", 0),
                          "kernels_precompiled": stats.get("kernels_precompiled", 0),
                          "precompile_seconds": stats.get("precompile_seconds", 0.0),
                          "fallback": record.fallback_reason})
    return found


def child_main(phase: str, model_name: str, device_name: str, with_inductor: bool) -> dict:
    """One phase, in this (fresh) process: ``cold`` or ``warm``; the numbers."""
    import torch

    import kitsune_backend
    from benchmarks.backends import kitsune_registered
    from benchmarks.suite import BY_NAME

    device = torch.device(device_name)
    workload = BY_NAME[model_name]
    if workload.kind != "train":
        raise SystemExit(f"{model_name} is not a training workload")
    module, (inputs,) = workload.build(device)
    _first_step(module, inputs, device)  # eager: CUDA/cuBLAS/cuDNN start-up
    torch.compile(lambda t: t * 2 + 1, backend="eager")(inputs[0])  # Dynamo's start-up
    result: dict[str, Any] = {"ok": True, "phase": phase,
                              "workers": kitsune_backend.config.resolve().compile_workers}
    if with_inductor:
        torch._dynamo.reset()  # the floor both pay: Dynamo + AOTAutograd, kernels run eagerly
        result["aot_eager_s"] = _first_step(torch.compile(module, backend="aot_eager"),
                                            inputs, device)
        torch._dynamo.reset()
        result["inductor_s"] = _first_step(torch.compile(module), inputs, device)
    torch._dynamo.reset()
    kitsune_backend.clear_history()
    backend = "kitsune" if kitsune_registered() else kitsune_backend.kitsune
    result["kitsune_s"] = _first_step(torch.compile(module, backend=backend), inputs, device)
    result["graphs"] = _graphs()
    return result


def summarize(model: str, device: str, workers: Optional[int], cold: dict, warm: dict) -> dict:
    """The results JSON: both phases, the two ratios and whether they meet the targets."""
    ratio = own_ratio = None
    if cold.get("inductor_s") and cold.get("kitsune_s") is not None:
        ratio = cold["kitsune_s"] / cold["inductor_s"]
        floor = cold.get("aot_eager_s")
        if floor is not None and cold["inductor_s"] > floor:
            own_ratio = max(cold["kitsune_s"] - floor, 0.0) / (cold["inductor_s"] - floor)
    per_graph = [g["compile_seconds"] for g in warm.get("graphs", [])]
    worst = max(per_graph) if per_graph else None
    return {
        "model": model, "device": device,
        "workers": cold.get("workers", workers),
        "cold": cold, "warm": warm,
        "cold_ratio": ratio, "cold_ratio_target": COLD_RATIO_TARGET,
        "cold_ratio_beyond_tracing": own_ratio,
        "warm_worst_graph_s": worst, "warm_graph_target_s": WARM_GRAPH_TARGET_S,
        "meets_targets": {
            "cold_ratio": None if ratio is None else ratio <= COLD_RATIO_TARGET,
            "warm_per_graph": None if worst is None else worst <= WARM_GRAPH_TARGET_S,
        },
    }


def format_table(results: dict) -> str:
    """The one table: cold kitsune, cold Inductor, ratio, warm kitsune, warm per graph."""
    def num(value: Any, unit: str = " s") -> str:
        return "n/a" if value is None else f"{value:.2f}{unit}"

    def verdict(ok: Optional[bool]) -> str:
        return "" if ok is None else ("ok" if ok else "MISSED")

    cold, warm, meets = results["cold"], results["warm"], results["meets_targets"]
    graphs = ", ".join(f"{g['graph']} {g['compile_seconds']:.2f} s"
                       for g in warm.get("graphs", [])) or "n/a"
    rows = [
        ("cold first step, kitsune", num(cold.get("kitsune_s")), ""),
        ("cold first step, inductor", num(cold.get("inductor_s")), ""),
        ("ratio kitsune / inductor", num(results["cold_ratio"], ""),
         f"<= {COLD_RATIO_TARGET:.2f} {verdict(meets['cold_ratio'])}"),
        ("cold first step, aot_eager", num(cold.get("aot_eager_s")),
         "Dynamo + AOTAutograd, no compiler: both pay it"),
        ("ratio beyond that floor", num(results.get("cold_ratio_beyond_tracing"), ""),
         "(kitsune - floor) / (inductor - floor)"),
        ("warm first step, kitsune", num(warm.get("kitsune_s")), ""),
        ("warm compile per graph", graphs,
         f"<= {WARM_GRAPH_TARGET_S:.1f} s each {verdict(meets['warm_per_graph'])}"),
    ]
    head = (f"compile time: {results['model']} training step (forward+backward), "
            f"{results['device']}, compile_workers={results['workers']}")
    width = max(len(r[1]) for r in rows)
    lines = [head] + [f"  {name:<28} {value:<{width}}   {target}".rstrip()
                      for name, value, target in rows]
    for phase in ("cold", "warm"):
        if not results[phase].get("ok"):
            lines.append(f"  {phase} run failed: {results[phase].get('error')}")
    for g in cold.get("graphs", []):
        lines.append(f"  cold {g['graph']}: compile {g['compile_seconds']:.2f} s, "
                     f"{g['kernels_precompiled']}/{g['kernels']} kernels precompiled in "
                     f"{g['precompile_seconds']:.2f} s"
                     + (f", FELL BACK: {g['fallback']}" if g["fallback"] else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    phase_name, model_arg, device_arg, inductor_arg = sys.argv[1:5]
    print(json.dumps(child_main(phase_name, model_arg, device_arg, inductor_arg == "1")))
