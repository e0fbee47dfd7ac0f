"""``debug_schedule``: the measured kernel schedule of one call, written into the debug dump.

The debug dump is written at compile time, before the graph ever runs, so it can hold only
the planned schedule. With ``debug_schedule=True`` (and ``debug_dir`` set) the compiled
callable is wrapped in a :class:`ScheduleProbe`, which runs call number
:data:`PROFILED_CALL` under ``torch.profiler`` and adds to the graph's dump folder:

* ``schedule_measured.json``: every device kernel of that call (name, stream, start and
  duration in microseconds, as the profiler measured them);
* ``schedule_measured.txt``: the same, per stream, with the summary line;
* ``schedule_measured.png``: the picture (when matplotlib is installed).

Call 3 is profiled because call 1 warms up and call 2 captures the CUDA graph: call 3 is
the first replay, the schedule every later call runs. The results of the profiled call are
the runner's own. Writing never breaks the call: a failure is a warning.

PyTorch leaves CUPTI attached once a CUDA profile stops, so every later CUDA call of the
process pays for it on the host: a process that used ``debug_schedule`` is not one to time.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, Callable

import torch

from . import timing
from .schedule_picture import draw_schedule, schedule_text

PROFILED_CALL = 3


class ScheduleProbe:
    """Runs ``runner`` on each call's arguments and profiles its call number
    :data:`PROFILED_CALL`, writing the measured schedule into ``folder``."""

    def __init__(self, runner: Callable[..., Any], folder: str, device: torch.device):
        self.runner = runner
        self.folder = folder
        self.device = device
        self.calls = 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        if self.calls != PROFILED_CALL:
            return self.runner(*args)
        result: list[Any] = []
        events = timing.profile_events(lambda: result.append(self.runner(*args)), self.device)
        try:
            write_schedule(events, self.folder, self.device)
        except Exception as exc:  # the dump is for reading; the call's results stand
            warnings.warn(f"kitsune: could not write the measured schedule into "
                          f"{self.folder!r}: {type(exc).__name__}: {exc}", RuntimeWarning,
                          stacklevel=2)
        return result[0]


def write_schedule(events: list[dict], folder: str, device: torch.device) -> None:
    """Write the kernel spans of profiler ``events`` into ``folder`` as JSON, text and (with
    matplotlib) a PNG."""
    spans = timing.kernel_spans(events)
    with open(os.path.join(folder, "schedule_measured.json"), "w") as f:
        json.dump({"call": PROFILED_CALL, "device": str(device), "kernels": spans}, f, indent=1)
    text = schedule_text(spans)
    if not spans and device.type != "cuda":
        text += f" (the graph ran on {device.type}: the profiler measures CUDA kernels only)"
    with open(os.path.join(folder, "schedule_measured.txt"), "w") as f:
        f.write(f"call {PROFILED_CALL}, measured by torch.profiler\n{text}\n")
    if spans:
        draw_schedule(spans, os.path.join(folder, "schedule_measured.png"))
