"""Regression check: did any kitsune ratio drop against committed baseline runs?

Only ratios are compared, never absolute times: for models, kitsune's speed over Inductor's
``reduce-overhead`` measured in the same run (``vs_reduce_overhead``: reduce-overhead ms /
kitsune ms; eager is host-noisy, the reference is what kitsune must beat); for
micro-benchmarks, the fraction of the copy bandwidth measured in the same run. Each ratio
is the median over several runs on each side (at least ``min_runs``, 3 by default), so one
noisy process neither hides nor invents a regression. A row regresses when its median ratio
falls by more than ``threshold`` (5%) of the baseline's, when it is missing from the new
runs, or when it now fails, disagrees with eager or was mistimed in any of them. Smoke runs
(``--quick`` or CPU) are not speed measurements and are refused.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any, Optional

DEFAULT_THRESHOLD = 0.05
DEFAULT_MIN_RUNS = 3
REFERENCE = "inductor-ro"


class NotComparable(ValueError):
    """The results cannot be compared (smoke runs, too few runs, nothing in common)."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One compared row: the median ratios of both sides."""

    key: str
    baseline: float
    new: Optional[float]
    problem: str = ""

    @property
    def change(self) -> Optional[float]:
        """Relative change of the ratio, new / baseline - 1."""
        return None if self.new is None else self.new / self.baseline - 1.0


def _model_ratio(row: dict, reference: dict[str, dict]) -> tuple[Optional[float], str]:
    """(kitsune row's ratio over reduce-overhead, status) in one run."""
    ro = reference.get(row["model"])
    if row["status"] != "ok":
        return None, row["status"]
    if ro is None or ro["status"] != "ok" or not ro.get("median_ms") or not row.get("median_ms"):
        return None, "no reduce-overhead row to compare with"
    return ro["median_ms"] / row["median_ms"], "ok"


def ratios(results: dict[str, Any]) -> dict[str, tuple[Optional[float], str]]:
    """(ratio, status) per kitsune row of one run, keyed ``model/backend`` or
    ``micro:case/backend``."""
    found = {}
    models = results.get("models", [])
    reference = {r["model"]: r for r in models if r["backend"] == REFERENCE}
    for row in models:
        if row["backend"].startswith("kitsune"):
            found[f"{row['model']}/{row['backend']}"] = _model_ratio(row, reference)
    for row in results.get("micro", {}).get("rows", []):
        if row["backend"].startswith("kitsune"):
            found[f"micro:{row['case']}/{row['backend']}"] = (
                row.get("fraction_of_copy"), row["status"])
    return found


def median_ratios(runs: list[dict[str, Any]]) -> dict[str, tuple[Optional[float], str]]:
    """(median ratio, status) per row over ``runs``: the status is the first one that is not
    ``ok`` (or ``missing`` from some run), the median is over the runs that measured it."""
    per_run = [ratios(run) for run in runs]
    merged = {}
    for key in sorted(set().union(*per_run)):
        seen = [r.get(key, (None, "missing")) for r in per_run]
        bad = [status for _, status in seen if status != "ok"]
        values = [value for value, status in seen if status == "ok" and value]
        merged[key] = (statistics.median(values) if values else None, bad[0] if bad else "ok")
    return merged


def _refuse(runs: list[dict[str, Any]], label: str, min_runs: int) -> None:
    if len(runs) < min_runs:
        raise NotComparable(f"{len(runs)} {label} run(s): the median needs at least {min_runs}")
    for results in runs:
        meta = results.get("meta", {})
        if meta.get("quick") or meta.get("device") != "cuda":
            raise NotComparable(
                f"a {label} file is a smoke run (quick={meta.get('quick')}, "
                f"device={meta.get('device')}), not a speed measurement")


def compare(new_runs: list[dict[str, Any]], baseline_runs: list[dict[str, Any]],
            threshold: float = DEFAULT_THRESHOLD, min_runs: int = DEFAULT_MIN_RUNS,
            ) -> tuple[list[Verdict], list[str]]:
    """Every baseline kitsune row checked against the new runs; returns (verdicts,
    warnings). A verdict with a non-empty ``problem`` is a regression."""
    _refuse(new_runs, "new", min_runs)
    _refuse(baseline_runs, "baseline", min_runs)
    warnings = []
    gpus = {r["meta"].get("gpu") for r in new_runs + baseline_runs}
    if len(gpus) > 1:
        warnings.append(f"different GPUs: {sorted(map(str, gpus))}; ratios may not carry over")
    new = median_ratios(new_runs)
    verdicts = []
    for key, (base_ratio, base_status) in median_ratios(baseline_runs).items():
        if base_status != "ok" or not base_ratio:
            warnings.append(f"{key}: not measured in the baseline ({base_status}); not checked")
            continue
        ratio, status = new.get(key, (None, "missing"))
        if status == "missing":
            problem = "missing from the new results"
        elif status != "ok":
            problem = f"new run status is {status}"
        elif ratio < base_ratio * (1.0 - threshold):
            problem = f"dropped {100 * (1 - ratio / base_ratio):.1f}% (> {100 * threshold:g}%)"
        else:
            problem = ""
        verdicts.append(Verdict(key, base_ratio, ratio, problem))
    if not verdicts:
        raise NotComparable("the baseline has no measured kitsune rows to compare against")
    return verdicts, warnings


def format_verdicts(verdicts: list[Verdict], warnings: list[str]) -> str:
    """A table of every compared median ratio; regressions marked."""
    lines = [f"warning: {w}" for w in warnings]
    lines.append(f"{'row':<44} {'baseline':>9} {'new':>9} {'change':>8}  verdict")
    for v in verdicts:
        new = "-" if v.new is None else f"{v.new:.3f}"
        change = "-" if v.change is None else f"{100 * v.change:+.1f}%"
        lines.append(f"{v.key:<44} {v.baseline:>9.3f} {new:>9} {change:>8}  "
                     f"{'REGRESSION: ' + v.problem if v.problem else 'ok'}")
    bad = [v for v in verdicts if v.problem]
    lines.append(f"{len(bad)} regression(s) in {len(verdicts)} kitsune ratio(s)" if bad
                 else f"no regression in {len(verdicts)} kitsune ratio(s)")
    return "\n".join(lines)
