"""Runnable repro scripts: the input graph of one compile, run eagerly and through kitsune.

:func:`repro_source` writes a standalone script from a record and its input graph: the
graph's FX Python code as a module, one :class:`InputSpec` per tensor input (the recorded
shape, strides, dtype and device) and the config. Running the script calls
:func:`kitsune_backend.repro_run.main`, which rebuilds the FX graph from that code, makes random inputs from a fixed seed, runs the
graph eagerly and through kitsune's graph compiler, and compares every output and every
input the graph mutates. It exits 0 when they match and 1 when kitsune fell back to the
ATen graph or a result differs.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pprint
from typing import Any, Optional, Sequence

import torch
import torch.fx as fx

from .errors import KitsuneError
from .record import CompileRecord, NodeSnapshot

# (rtol, atol) per dtype when comparing kitsune with eager; exact for the rest.
TOLERANCES = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
}


class ReproError(KitsuneError):
    """The input graph cannot be written as a standalone script (the message says why)."""


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One tensor input of a repro: made random with exactly this layout."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str
    device: str

    def make(self, generator: torch.Generator) -> torch.Tensor:
        """A tensor of this layout: standard normal for floating types, 0 or 1 otherwise."""
        dtype = getattr(torch, self.dtype)
        extent = 1 + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
        numel = extent if all(n > 0 for n in self.shape) else 0
        if dtype.is_complex:
            flat = torch.randn(numel, generator=generator, dtype=dtype)
        elif dtype.is_floating_point:  # drawn in fp32: randn has no kernel for fp8 types
            flat = torch.randn(numel, generator=generator).to(dtype)
        else:
            flat = torch.randint(0, 2, (numel,), generator=generator).to(dtype)
        return flat.to(self.device).as_strided(self.shape, self.stride)


def repro_source(
    record: CompileRecord,
    input_gm: fx.GraphModule,
    example_inputs: Sequence[Any] = (),
    constants_file: Optional[str] = None,
) -> str:
    """The text of a runnable repro script for ``record``, whose input graph is ``input_gm``.

    Inputs come from the record's placeholder snapshots (``example_inputs`` fill in any the
    snapshots lack). A graph that reads attributes (``get_attr``) needs them saved with
    :func:`save_constants` and that file's name, relative to the script, as
    ``constants_file``. Raises :class:`ReproError` for what a script cannot hold (a global
    that cannot be imported, an input that is neither a tensor nor a number).
    """
    if constants_file is None and any(n.op == "get_attr" for n in input_gm.graph.nodes):
        raise ReproError("the graph reads attributes: save them and pass constants_file")
    code = input_gm.graph.python_code(
        root_module="self", verbose=True, include_stride=True, include_device=True
    )
    imports = [line for line in _import_lines({"torch": torch, **code.globals})
               if line != "import torch"]  # the template's first import
    placeholders = [n for n in record.input_nodes if n.op == "placeholder"]
    examples = list(example_inputs) + [None] * (len(placeholders) - len(example_inputs))
    inputs = [
        f"    {_spec_source(node, example)},  # {node.name}"
        for node, example in zip(placeholders, examples)
    ]
    lines = code.src.strip("\n").splitlines()
    body = "\n".join("    " + line if line.strip() else "" for line in lines)
    options = {f.name: getattr(record.config, f.name) for f in dataclasses.fields(record.config)}
    options["debug_dir"] = ""
    return _TEMPLATE.format(
        name=record.name,
        imports="\n".join(imports),
        body=body,
        inputs="\n".join(inputs),
        kind=record.name.split("_")[0],
        options=pprint.pformat(options, indent=4, sort_dicts=True),
        constants="None" if constants_file is None else
        f"os.path.join(os.path.dirname(os.path.abspath(__file__)), {constants_file!r})",
    )


def save_constants(input_gm: fx.GraphModule, path: str) -> None:
    """Save every attribute the graph reads (``get_attr`` targets) to ``path``."""
    found = {}
    for node in input_gm.graph.nodes:
        if node.op == "get_attr":
            value: Any = input_gm
            for part in node.target.split("."):
                value = getattr(value, part)
            found[node.target] = value
    torch.save(found, path)


def _spec_source(node: NodeSnapshot, example: Any) -> str:
    if node.shape is not None and node.dtype not in (None, "tuple") and node.stride is not None:
        spec = InputSpec(_hints(node.shape), _hints(node.stride), node.dtype, node.device or "cpu")
        return repr(spec)
    if node.value is not None:
        return repr(node.value)
    if isinstance(example, torch.Tensor):
        dtype = str(example.dtype).replace("torch.", "")
        layout = _hints(example.shape), _hints(example.stride())
        return repr(InputSpec(*layout, dtype, str(example.device)))
    if isinstance(example, (bool, int, float)):
        return repr(example)
    raise ReproError(f"input {node.name} is neither a tensor nor a number; no repro written")


def _hints(values: Sequence[Any]) -> tuple[int, ...]:
    found = []
    for value in values:
        if isinstance(value, torch.SymInt):
            value = getattr(value.node, "hint", None)
            if value is None:
                raise ReproError("an input has a size with no hint (data-dependent); no repro")
        found.append(int(value))
    return tuple(found)


def _import_lines(globals_: dict[str, Any]) -> list[str]:
    lines = []
    modules_first = sorted(globals_.items(), key=lambda item: (not _is_module(item[1]), item[0]))
    for name, value in modules_first:
        if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
            lines.append(f"{name} = float({str(value)!r})")
        elif value is type(None):
            lines.append(f"{name} = type(None)")
        elif _is_module(value):
            lines.append(f"import {value.__name__}" if value.__name__ == name
                         else f"import {value.__name__} as {name}")
        else:
            lines.append(_import_object(name, value))
    return lines


def _is_module(value: Any) -> bool:
    return isinstance(value, type(math))


def _import_object(name: str, value: Any) -> str:
    module = getattr(value, "__module__", None)
    qualname = getattr(value, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        raise ReproError(f"the graph uses {value!r}, which a script cannot import; no repro")
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if found is not value:
        raise ReproError(f"the graph uses {value!r}, not importable as {module}.{qualname}")
    if "." in qualname:
        return f"import {module}\n{name} = {module}.{qualname}"
    return f"from {module} import {qualname}" + ("" if name == qualname else f" as {name}")


_TEMPLATE = '''"""kitsune repro of graph {name!r}: run it with ``python repro.py``.

It rebuilds the FX graph below, makes random inputs (fixed seed) with the recorded shapes,
strides, dtypes and devices (integer and bool inputs are drawn from 0 and 1), runs the graph
eagerly and through kitsune with the recorded config, and compares outputs and mutated
inputs. Exit status 0: they match; 1: kitsune fell back, raised, or differs.
Plugin passes installed as entry points run here too; ones added by register_pass do not.
"""
import os

import torch

if not torch.cuda.is_available():  # CPU tensors: generated kernels need Triton's interpreter,
    os.environ.setdefault("TRITON_INTERPRET", "1")  # chosen before triton is imported

{imports}

from kitsune_backend.repro import InputSpec
from kitsune_backend.repro_run import main


class Repro(torch.nn.Module):
{body}


INPUTS = [
{inputs}
]

KIND = {kind!r}

OPTIONS = {options}

CONSTANTS = {constants}

if __name__ == "__main__":
    raise SystemExit(main(Repro, INPUTS, kind=KIND, options=OPTIONS, constants=CONSTANTS))
'''
