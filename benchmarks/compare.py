"""Regression check: did any kitsune speedup ratio drop against a committed baseline?

Only ratios are compared, never absolute times: for models, kitsune's speedup over eager
measured in the same run; for micro-benchmarks, the fraction of the copy bandwidth measured
in the same run. A row regresses when its ratio falls by more than ``threshold`` (5%) of
the baseline's, when it is missing from the new run, or when it now fails or disagrees
with eager. Smoke runs (``--quick`` or CPU) are not speed measurements and are refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

DEFAULT_THRESHOLD = 0.05


class NotComparable(ValueError):
    """The two results files cannot be compared (smoke runs, nothing in common)."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One compared row."""

    key: str
    baseline: float
    new: Optional[float]
    problem: str = ""

    @property
    def change(self) -> Optional[float]:
        """Relative change of the ratio, new / baseline - 1."""
        return None if self.new is None else self.new / self.baseline - 1.0


def _ratios(results: dict[str, Any]) -> dict[str, tuple[Optional[float], str]]:
    """(ratio, status) per kitsune row, keyed ``model/backend`` or ``micro:case/backend``."""
    found = {}
    for row in results.get("models", []):
        if row["backend"].startswith("kitsune"):
            found[f"{row['model']}/{row['backend']}"] = (row.get("speedup"), row["status"])
    for row in results.get("micro", {}).get("rows", []):
        if row["backend"].startswith("kitsune"):
            found[f"micro:{row['case']}/{row['backend']}"] = (
                row.get("fraction_of_copy"), row["status"])
    return found


def _refuse_smoke(results: dict[str, Any], label: str) -> None:
    meta = results.get("meta", {})
    if meta.get("quick") or meta.get("device") != "cuda":
        raise NotComparable(f"the {label} file is a smoke run (quick={meta.get('quick')}, "
                            f"device={meta.get('device')}), not a speed measurement")


def compare(new: dict[str, Any], baseline: dict[str, Any],
            threshold: float = DEFAULT_THRESHOLD) -> tuple[list[Verdict], list[str]]:
    """Every baseline kitsune row checked against ``new``; returns (verdicts, warnings).

    A verdict with a non-empty ``problem`` is a regression.
    """
    _refuse_smoke(new, "new")
    _refuse_smoke(baseline, "baseline")
    warnings = []
    if new["meta"].get("gpu") != baseline["meta"].get("gpu"):
        warnings.append(f"different GPUs: new {new['meta'].get('gpu')!r}, baseline "
                        f"{baseline['meta'].get('gpu')!r}; ratios may not carry over")
    new_ratios = _ratios(new)
    verdicts = []
    for key, (base_ratio, base_status) in sorted(_ratios(baseline).items()):
        if base_status != "ok" or not base_ratio:
            warnings.append(f"{key}: not measured in the baseline ({base_status}); not checked")
            continue
        ratio, status = new_ratios.get(key, (None, "missing"))
        if status == "missing":
            problem = "missing from the new results"
        elif status != "ok":
            problem = f"new run status is {status}"
        elif ratio is None:
            problem = "no ratio in the new results"
        elif ratio < base_ratio * (1.0 - threshold):
            problem = f"dropped {100 * (1 - ratio / base_ratio):.1f}% (> {100 * threshold:g}%)"
        else:
            problem = ""
        verdicts.append(Verdict(key, base_ratio, ratio, problem))
    if not verdicts:
        raise NotComparable("the baseline has no measured kitsune rows to compare against")
    return verdicts, warnings


def format_verdicts(verdicts: list[Verdict], warnings: list[str]) -> str:
    """A table of every compared ratio; regressions marked and listed last."""
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
