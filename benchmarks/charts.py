"""Charts from a results file: one PNG with six panels (matplotlib is optional).

Panels: speedup over eager per model and backend; kitsune's feature-by-feature breakdown;
first-call (compile) time; peak memory; kernels per iteration; micro-benchmark bandwidth as
a fraction of the copy bandwidth. Rows that failed have no bar; rows that disagree with
eager are drawn hatched and outlined in red, so a fast wrong result cannot pass as a win.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

MAIN_BACKENDS = ("eager", "inductor", "inductor-ro", "cudagraphs", "kitsune")
# One colour per backend in every panel (matplotlib's tab10 order).
COLORS = {
    "eager": "tab:gray", "inductor": "tab:orange", "inductor-ro": "tab:brown",
    "cudagraphs": "tab:purple", "kitsune": "tab:green", "kitsune-no-fusion": "tab:blue",
    "kitsune-no-streams": "tab:cyan", "kitsune-no-cuda-graphs": "tab:red",
    "kitsune-no-memory-pool": "tab:pink",
}
MISSING_MATPLOTLIB = ("matplotlib is not installed, so no charts were drawn; install it "
                      "with `pip install matplotlib` (or the `charts` extra of kitsune-backend)")


def _grouped(ax, groups: list[str], series: list[str], value: dict, flagged: set,
             title: str, ylabel: str, log: bool = False, line: Optional[float] = None) -> None:
    """Bars per group, one per series; (group, series) pairs in ``flagged`` are hatched."""
    width = 0.8 / max(len(series), 1)
    for i, name in enumerate(series):
        xs, ys, hatched = [], [], []
        for g, group in enumerate(groups):
            v = value.get((group, name))
            if v is not None and v > 0:
                xs.append(g + (i - (len(series) - 1) / 2) * width)
                ys.append(v)
                hatched.append((group, name) in flagged)
        bars = ax.bar(xs, ys, width, label=name, color=COLORS.get(name))
        for bar, flag in zip(bars, hatched):
            if flag:
                bar.set_hatch("//")
                bar.set_edgecolor("red")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=20, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=8)
    if log:
        ax.set_yscale("log")
    if line is not None:
        ax.axhline(line, color="gray", linewidth=0.8, linestyle="--")
    if series:
        ax.legend(fontsize=6, ncol=2)


def _table(rows: list[dict], group_key: str, field: str) -> tuple[list, list, dict, set]:
    groups, series, value, flagged = [], [], {}, set()
    for r in rows:
        if r.get(field) is None or r["status"] not in ("ok", "mismatch"):
            continue
        group = r[group_key]
        groups += [group] if group not in groups else []
        series += [r["backend"]] if r["backend"] not in series else []
        value[(group, r["backend"])] = r[field]
        if r["status"] == "mismatch":
            flagged.add((group, r["backend"]))
    return groups, series, value, flagged


def make_charts(results: dict[str, Any], path: str) -> bool:
    """Draw the six panels into ``path``; returns False (with a message) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(MISSING_MATPLOTLIB, file=sys.stderr)
        return False
    models = results.get("models", [])
    main = [r for r in models if r["backend"] in MAIN_BACKENDS]
    kitsune = [r for r in models if r["backend"].startswith("kitsune")]
    fig, axes = plt.subplots(3, 2, figsize=(14, 13))
    meta = results["meta"]
    smoke = " - SMOKE RUN, NOT A SPEED MEASUREMENT" if meta.get("quick") or \
        meta.get("device") != "cuda" else ""
    fig.suptitle(f"kitsune benchmark {meta['date'][:10]} on {meta.get('gpu') or meta['device']}"
                 f" (torch {meta['torch']}){smoke}", fontsize=11)
    panels = [
        (main, "model", "speedup", "Speedup over eager (per call from Python)", "x eager",
         False, 1.0),
        (kitsune, "model", "speedup", "kitsune feature breakdown (one feature off at a time)",
         "x eager", False, 1.0),
        (main + [r for r in kitsune if r["backend"] != "kitsune"], "model", "first_call_s",
         "First call (compile) time", "seconds (log)", True, None),
        (main, "model", "peak_mem_mb", "Peak memory over the timed calls", "MiB", False, None),
        (main, "model", "kernels", "Device kernels per iteration (profiler)", "kernels",
         False, None),
        (results.get("micro", {}).get("rows", []), "case", "fraction_of_copy",
         "Memory-bound kernels: fraction of copy bandwidth", "fraction of copy", False, 1.0),
    ]
    for ax, (rows, key, field, title, ylabel, log, line) in zip(axes.flat, panels):
        groups, series, value, flagged = _table(rows, key, field)
        if not groups:
            ax.set_title(title, fontsize=10)
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            continue
        _grouped(ax, groups, series, value, flagged, title, ylabel, log, line)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
