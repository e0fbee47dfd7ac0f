"""``KITSUNE_DEBUG_DIR``: write every stage of a compiled graph to a numbered folder."""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import torch.fx as fx

from .record import CompileRecord


def dump_record(
    record: CompileRecord, input_gm: fx.GraphModule, example_inputs: Sequence[Any], root: str
) -> str:
    """Write ``record`` under ``root/NNN_<graph name>/``; returns the folder written."""
    os.makedirs(root, exist_ok=True)
    number = len([d for d in os.listdir(root) if d[:3].isdigit()])
    folder = os.path.join(root, f"{number:03d}_{record.name}")
    os.makedirs(folder)
    _write(folder, "00_input.py", record.input_code)
    for index, p in enumerate(record.passes, start=1):
        _write(folder, f"{index:02d}_{p.name}.py", p.graph_code)
    _write(folder, "passes.txt", "\n".join(
        f"{p.stage:12s} {p.name:24s} {p.seconds * 1e3:8.2f} ms  {'; '.join(p.notes)}"
        for p in record.passes
    ))
    _write(folder, "declines.txt", "\n".join(str(d) for d in record.declines))
    _write(folder, "stats.json", json.dumps(record.stats, indent=2, default=str))
    for kernel in record.kernels:
        _write(folder, f"kernel_{kernel.name}.py", kernel.source)
    return folder


def _write(folder: str, name: str, text: str) -> None:
    with open(os.path.join(folder, name), "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")
