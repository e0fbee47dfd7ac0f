"""Every benchmarked workload: the core six (:mod:`benchmarks.workloads`) and the broad
suite (:mod:`benchmarks.zoo`), by name and by group."""

from __future__ import annotations

from .workloads import WORKLOADS as CORE, Workload
from .zoo import BROAD

ALL: tuple[Workload, ...] = CORE + BROAD
BY_NAME = {w.name: w for w in ALL}
GROUPS = {"core": [w.name for w in CORE], "broad": [w.name for w in BROAD],
          "all": [w.name for w in ALL]}
"""What ``--models`` accepts besides names: ``core`` (the default), ``broad``, ``all``."""
