"""``KITSUNE_DEBUG_DIR``: write every stage of a compiled graph to a numbered folder.

One folder per compiled graph, ``<root>/NNN_compile<session>_<graph>/`` (``NNN`` counts up
across the whole root), holding:

* ``00_input.py`` and ``NN_<pass>.py``: the readable FX code before all passes and after
  each one, with ``.dot`` drawings of the same graphs beside them;
* ``passes.txt`` (stage, pass, time, notes), ``declines.txt`` (every "no" with its
  reason), ``stats.json`` (summary numbers), ``explain.txt``, ``config.json``;
* ``kernels/<name>.py``: the source of every generated kernel;
* ``fallback.txt``: the traceback, when the graph fell back to ATen;
* ``repro.py`` (and ``constants.pt`` when the graph reads attributes): a runnable script
  that runs the input graph eagerly and through kitsune and compares.

Dumping never breaks a compile: a failure is a warning and a ``debug_dump`` decline
(raised instead under ``strict=True``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from typing import Any, Sequence

import torch.fx as fx

from . import inspection, repro
from .ir import Decline
from .record import CompileRecord

def dump_record(record: CompileRecord, input_gm: fx.GraphModule, example_inputs: Sequence[Any],
                root: str, session_id: int) -> str:
    """Write ``record`` under a new numbered folder of ``root``; returns the folder written
    (``""`` when writing failed: the record then carries a ``debug_dump`` decline)."""
    try:
        folder = _new_folder(root, f"compile{session_id}_{record.name}")
        _write_repro(record, input_gm, example_inputs, folder)
        _write_graphs(record, folder)
        _write_reports(record, folder)
    except Exception as exc:
        if record.config.strict:
            raise
        reason = f"could not write the debug dump under {root!r}: {type(exc).__name__}: {exc}"
        warnings.warn(f"kitsune: {reason}", RuntimeWarning, stacklevel=2)
        record.other_declines.append(Decline("debug_dump", reason))
        return ""
    return folder


def _new_folder(root: str, label: str) -> str:
    """``root/NNN_label`` with ``NNN`` one past the highest number there (safe if another
    process dumps into the same root at the same time)."""
    os.makedirs(root, exist_ok=True)
    numbers = [int(d[:3]) for d in os.listdir(root) if d[:3].isdigit()]
    number = max(numbers, default=-1) + 1
    while True:
        folder = os.path.join(root, f"{number:03d}_{label}")
        try:
            os.makedirs(folder)
            return folder
        except FileExistsError:
            number += 1


def _write_graphs(record: CompileRecord, folder: str) -> None:
    for index, (stage, code) in enumerate(inspection.graphs(record).items()):
        stem = f"{index:02d}_{_file_safe(stage)}"
        _write(folder, stem + ".py", code)
        _write(folder, stem + ".dot", inspection.graph_dot(record, stage))


def _write_reports(record: CompileRecord, folder: str) -> None:
    _write(folder, "passes.txt", "\n".join(
        f"{p.stage:12s} {p.name:24s} {p.seconds * 1e3:8.2f} ms  {'; '.join(p.notes)}"
        for p in record.passes
    ))
    _write(folder, "declines.txt", "\n".join(str(d) for d in record.declines))
    _write(folder, "stats.json", json.dumps(record.stats, indent=2, default=str))
    _write(folder, "explain.txt", inspection.explain(record))
    _write(folder, "config.json", json.dumps(dataclasses.asdict(record.config), indent=2))
    if record.fallback_reason:
        _write(folder, "fallback.txt", record.fallback_traceback or record.fallback_reason)
    regions_by_kernel: dict[str, list] = {}  # identical regions share one kernel
    for kernel in record.kernels:
        regions_by_kernel.setdefault(kernel.name, []).append(kernel)
    for name, regions in regions_by_kernel.items():
        os.makedirs(os.path.join(folder, "kernels"), exist_ok=True)
        header = "".join("# from FX nodes: " + ", ".join(k.nodes) + "\n" for k in regions)
        _write(folder, os.path.join("kernels", _file_safe(name) + ".py"),
               header + regions[0].source)


def _write_repro(
    record: CompileRecord, input_gm: fx.GraphModule, example_inputs: Sequence[Any], folder: str
) -> None:
    constants = None
    if any(n.op == "get_attr" for n in input_gm.graph.nodes):
        constants = "constants.pt"
        repro.save_constants(input_gm, os.path.join(folder, constants))
    try:
        record.repro_source = repro.repro_source(record, input_gm, example_inputs, constants)
    except repro.ReproError as exc:
        record.other_declines.append(Decline("debug_dump", f"no repro.py: {exc}"))
        return
    _write(folder, "repro.py", record.repro_source)


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _write(folder: str, name: str, text: str) -> None:
    with open(os.path.join(folder, name), "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")

