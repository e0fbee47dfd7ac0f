"""Results: the JSON document (saved as the run goes) and the stdout tables."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
import sys
from typing import Any, Optional

import torch

import kitsune_backend

from .backends import kitsune_registered

SCHEMA = 1
QUICK_BANNER = "CPU SMOKE RUN (--quick): checks that everything runs and agrees with eager. " \
               "NOT A SPEED MEASUREMENT."


def metadata(device: torch.device, args: dict[str, Any]) -> dict[str, Any]:
    """Where and how the run happened: device, versions, date, commit, settings."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    on_cuda = device.type == "cuda"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if on_cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "kitsune": kitsune_backend.__version__,
        "kitsune_by_entry_point": kitsune_registered(),
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", ""),
        "allow_tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32,
                       "cudnn": torch.backends.cudnn.allow_tf32},
        "argv": sys.argv[1:],
        **args,
    }


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, cwd=os.path.dirname(os.path.abspath(__file__)))
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


def new_results(meta: dict[str, Any]) -> dict[str, Any]:
    """An empty results document."""
    return {"schema": SCHEMA, "meta": meta, "models": [], "micro": {"copy_gbps": None,
                                                                    "rows": []},
            "skipped": []}


def save(results: dict[str, Any], path: Optional[str]) -> None:
    """Write ``results`` to ``path`` atomically (a partial run still leaves valid JSON)."""
    if not path:
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1, default=str)
    os.replace(tmp, path)


def load(path: str) -> dict[str, Any]:
    """Read a results file, checking it is one."""
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or "meta" not in data:
        raise ValueError(f"{path} is not a kitsune benchmark results file (schema {SCHEMA})")
    return data


def _fmt(value: Any, spec: str, empty: str = "-") -> str:
    return empty if value is None else format(value, spec)


def _check_text(row: dict) -> str:
    if row.get("status") == "ok":
        return "ref" if row.get("note") == "reference" else "ok"
    return str(row.get("status")).upper()


def format_models(rows: list[dict]) -> str:
    """The model table: one line per (model, backend)."""
    width = max([10] + [len(r.get("model", "")) for r in rows])
    header = (f"{'model':<{width}} {'backend':<22} {'check':<8} {'ms/call':>9} {'p10-p90':>15} "
              f"{'speedup':>8} {'vs RO':>6} {'host ms':>8} {'1st call s':>10} {'peak MB':>8} "
              f"{'kernels':>7} {'GPU ms':>7} {'launch':>6} {'graphs':>6}  note")
    lines = [header, "-" * len(header)]
    for r in rows:
        p10, p90 = r.get("p10_ms"), r.get("p90_ms")
        spread = f"{p10:.3f}-{p90:.3f}" if p10 is not None and p90 is not None else "-"
        note = "" if r.get("note") == "reference" else r.get("note", "")
        lines.append(
            f"{r.get('model', ''):<{width}} {r.get('backend', ''):<22} {_check_text(r):<8} "
            f"{_fmt(r.get('median_ms'), '.3f'):>9} {spread:>15} "
            f"{_fmt(r.get('speedup'), '.2f'):>8} {_fmt(r.get('vs_reduce_overhead'), '.2f'):>6} "
            f"{_fmt(r.get('plain_loop_ms'), '.3f'):>8} "
            f"{_fmt(r.get('first_call_s'), '.2f'):>10} {_fmt(r.get('peak_mem_mb'), '.0f'):>8} "
            f"{_fmt(r.get('kernels'), 'd'):>7} {_fmt(r.get('kernel_ms'), '.3f'):>7} "
            f"{_fmt(r.get('launches'), 'd'):>6} "
            f"{_fmt(r.get('graphs'), 'd'):>6}  {note}"
        )
    return "\n".join(lines)


SLOWER_THAN_REFERENCE = 0.95
"""A kitsune row below this ratio over reduce-overhead is "slower" (more than 5%)."""


def versus_reduce_overhead(rows: list[dict]) -> dict[str, Any]:
    """kitsune (all features on) against Inductor reduce-overhead over the timed models:
    ``models`` compared, ``geomean`` of the ratios (reduce-overhead ms / kitsune ms),
    ``slower`` (model -> ratio, below :data:`SLOWER_THAN_REFERENCE`)."""
    ratios = {r["model"]: r["vs_reduce_overhead"] for r in rows
              if r["backend"] == "kitsune" and r.get("status") == "ok"
              and r.get("vs_reduce_overhead")}
    geomean = math.exp(sum(map(math.log, ratios.values())) / len(ratios)) if ratios else None
    slower = {m: v for m, v in ratios.items() if v < SLOWER_THAN_REFERENCE}
    return {"models": len(ratios), "geomean": geomean, "slower": slower}


def format_versus(rows: list[dict]) -> str:
    """One line for :func:`versus_reduce_overhead` ("" when nothing compares)."""
    found = versus_reduce_overhead(rows)
    if not found["models"]:
        return ""
    slower = ", ".join(f"{m} {v:.2f}x" for m, v in sorted(found["slower"].items())) or "none"
    return (f"kitsune vs reduce-overhead over {found['models']} model(s): geomean "
            f"{found['geomean']:.2f}x; more than 5% slower: {slower}")


def format_micro(micro: dict[str, Any]) -> str:
    """The micro-benchmark table, with the copy bandwidth it is measured against."""
    copy = micro.get("copy_gbps")
    lines = [f"copy bandwidth (read+write): {_fmt(copy, '.0f')} GB/s"]
    header = (f"{'case':<18} {'backend':<10} {'check':<8} {'ms/call':>9} {'GB/s':>8} "
              f"{'% of copy':>9} {'kernels':>7}  note")
    lines += [header, "-" * len(header)]
    for r in micro.get("rows", []):
        fraction = r.get("fraction_of_copy")
        fraction = None if fraction is None else 100 * fraction
        note = "" if r.get("note") == "reference" else r.get("note", "")
        lines.append(
            f"{r.get('case', ''):<18} {r.get('backend', ''):<10} {_check_text(r):<8} "
            f"{_fmt(r.get('median_ms'), '.4f'):>9} {_fmt(r.get('gbps'), '.0f'):>8} "
            f"{_fmt(fraction, '.1f'):>9} {_fmt(r.get('kernels'), 'd'):>7}  {note}"
        )
    return "\n".join(lines)


def format_results(results: dict[str, Any]) -> str:
    """Everything for stdout: banner, settings, skipped workloads, both tables, a verdict."""
    meta = results["meta"]
    lines = []
    if meta.get("quick") or meta.get("device") == "cpu":
        lines += ["=" * len(QUICK_BANNER), QUICK_BANNER, "=" * len(QUICK_BANNER)]
    lines.append(f"kitsune benchmark  {meta.get('date')}  device={meta.get('device')} "
                 f"gpu={meta.get('gpu')} torch={meta.get('torch')} triton={meta.get('triton')} "
                 f"iters={meta.get('iters')} warmup={meta.get('warmup')}")
    lines.append("ms/call: median of calls each synchronized and timed alone (CUDA events); "
                 "speedup: eager ms / backend ms; vs RO: reduce-overhead ms / backend ms; "
                 "host ms: the same loop on the host's clock, where cross-checked; "
                 "GPU ms: kernel time per call (profiler)")
    for skip in results.get("skipped", []):
        lines.append(f"skipped {skip['what']}: {skip['reason']}")
    if results["models"]:
        lines += ["", format_models(results["models"])]
        versus = format_versus(results["models"])
        lines += [versus] if versus else []
    if results["micro"]["rows"]:
        lines += ["", format_micro(results["micro"])]
    bad = failures(results)
    lines += ["", f"{len(bad)} row(s) failed or mismatched eager" if bad
              else "every measured row agrees with eager"]
    lines += [f"  {line}" for line in bad]
    return "\n".join(lines)


def failures(results: dict[str, Any]) -> list[str]:
    """One line per row that errored, disagreed with eager, or whose timing disagreed with
    the plain loop."""
    bad = []
    for r in results["models"]:
        if r["status"] in ("error", "mismatch", "mistimed"):
            bad.append(f"{r['model']} / {r['backend']}: {r['status']}: {r['note']}")
    for r in results["micro"]["rows"]:
        if r["status"] in ("error", "mismatch"):
            bad.append(f"{r['case']} / {r['backend']}: {r['status']}: {r['note']}")
    return bad


COUNT_KEYS = ("kernels", "kernel_ms", "launches", "graph_launches", "cpu_ops")
"""The per-row fields that ``run --kernel-counts`` fills from the profiler."""


def fill_counts(results: dict[str, Any], counts: dict[str, Any]) -> None:
    """Copy the kernel counts of ``counts`` (a ``--kernel-counts only`` run) into the rows
    of ``results`` for the same model or micro case and backend, in place."""
    if counts["meta"].get("gpu") != results["meta"].get("gpu"):
        raise ValueError("cannot take kernel counts from a run on a different device")
    by_row = {(r["model"], r["backend"]): r for r in counts["models"]}
    by_row.update({(r["case"], r["backend"]): r for r in counts["micro"]["rows"]})
    for row in results["models"] + results["micro"]["rows"]:
        source = by_row.get((row.get("model", row.get("case")), row["backend"]))
        if source is not None:
            row.update({k: source[k] for k in COUNT_KEYS if source.get(k) is not None})
    results["meta"]["kernel_counts_from"] = counts["meta"]


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One results document from runs of different models (e.g. split to fit a time limit).

    Speedups stay valid because each model's rows, eager included, come from one run; a
    model or micro case measured in two parts is an error, and so are parts from
    different GPUs or of different kinds (smoke and full).
    """
    if not parts:
        raise ValueError("nothing to merge")
    first = parts[0]["meta"]
    for part in parts[1:]:
        meta = part["meta"]
        if (meta.get("gpu"), meta.get("device"), meta.get("quick")) != (
                first.get("gpu"), first.get("device"), first.get("quick")):
            raise ValueError("cannot merge results from different devices or run kinds")
    merged = new_results({**first, "merged_from": [p["meta"] for p in parts]})
    seen_models: set[str] = set()
    seen_cases: set[str] = set()
    for part in parts:
        models = {row["model"] for row in part["models"]}
        cases = {row["case"] for row in part["micro"]["rows"]}
        twice = (models & seen_models) | (cases & seen_cases)
        if twice:
            raise ValueError(f"measured in two parts: {sorted(twice)}")
        seen_models |= models
        seen_cases |= cases
        merged["models"] += part["models"]
        merged["micro"]["rows"] += part["micro"]["rows"]
        if part["micro"]["rows"]:
            merged["micro"]["copy_gbps"] = part["micro"]["copy_gbps"]
        merged["skipped"] += part["skipped"]
    measured = seen_models | seen_cases
    skipped = {s["what"]: s for s in merged["skipped"] if s["what"] not in measured}
    merged["skipped"] = list(skipped.values())
    return merged
