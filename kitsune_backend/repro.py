"""Runnable repro scripts: the input graph of one compile, run eagerly and through kitsune.

:func:`repro_source` writes a standalone script from a record and its input graph: the
graph's FX Python code as a module, one :class:`InputSpec` per tensor input (the recorded
shape, strides, dtype and device) and the config. Running the script calls :func:`main`,
which rebuilds the FX graph from that code, makes random inputs from a fixed seed, runs the
graph eagerly and through kitsune's graph compiler, and compares every output and every
input the graph mutates. It exits 0 when they match and 1 when kitsune fell back to the
ATen graph or a result differs.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pprint
import traceback
from typing import Any, Callable, Optional, Sequence

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

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
    imports = _import_lines({"torch": torch, **code.globals})
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


def main(
    module_class: Callable[[], torch.nn.Module],
    inputs: Sequence[Any],
    kind: str,
    options: dict[str, Any],
    constants: Optional[str] = None,
    seed: int = 0,
) -> int:
    """Run a repro: eager against kitsune on the same random inputs; prints what it finds and
    returns the exit status (0: match, 1: fallback or mismatch)."""
    # imported here: the compiler imports this module (through the debug dump)
    from .compiler import compile_graph
    from .config import Config
    from .session import new_session

    module = module_class()
    if constants is not None:
        for target, value in torch.load(constants, weights_only=False).items():
            _set_attribute(module, target, value)
    generator = torch.Generator().manual_seed(seed)
    args = [spec.make(generator) if isinstance(spec, InputSpec) else spec for spec in inputs]
    gm = fx.symbolic_trace(module)
    fake_args = _fake_propagate(gm, args)
    expected_args, expected = _run_seeded(lambda a: module(*a), args, seed)
    config = Config().replace(**options)
    session = new_session(config)
    compiled = compile_graph(gm, fake_args, config, kind, session)
    record = session.records[-1]
    print(f"kitsune compiled graph {record.name!r} ({len(record.input_nodes)} nodes)")
    if record.fallback_reason:
        print("kitsune FELL BACK to the ATen graph:", record.fallback_reason)
        print(record.fallback_traceback)
        return 1
    try:
        actual_args, actual = _run_seeded(lambda a: compiled(list(a)), args, seed)
    except Exception:
        print("kitsune's compiled graph RAISED:")
        traceback.print_exc()
        return 1
    problems = _compare("output", actual, expected) + _compare("input", actual_args, expected_args)
    if problems:
        print("MISMATCH between kitsune and eager:")
        print("\n".join("  " + p for p in problems))
        return 1
    print(f"OK: kitsune matches eager ({_count_tensors(expected)} output tensors)")
    return 0


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


def _fake_propagate(gm: fx.GraphModule, args: Sequence[Any]) -> list[Any]:
    """Give every node ``meta["val"]`` and return fake inputs, as AOTAutograd hands them."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fakes = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
    FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*fakes)
    return fakes


def _run_seeded(fn: Callable[[list], Any], args: Sequence[Any], seed: int) -> tuple[list, Any]:
    """Run ``fn`` on fresh copies of ``args`` (same strides) after seeding every RNG."""
    copies = [_clone(a) for a in args]
    torch.manual_seed(seed)
    return copies, fn(list(copies))


def _clone(value: Any) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    copy = torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device=value.device)
    return copy.copy_(value)


def _compare(what: str, actual: Any, expected: Any, path: str = "") -> list[str]:
    where = f"{what}{path}"
    if isinstance(expected, (list, tuple)):
        if not isinstance(actual, (list, tuple)) or len(actual) != len(expected):
            return [f"{where}: expected a sequence of {len(expected)}, got {type(actual).__name__}"]
        found = []
        for index, (a, e) in enumerate(zip(actual, expected)):
            found += _compare(what, a, e, f"{path}[{index}]")
        return found
    if isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor):
            return [f"{where}: expected a tensor, got {type(actual).__name__}"]
        rtol, atol = TOLERANCES.get(expected.dtype, (0.0, 0.0))
        try:
            torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True)
        except AssertionError as exc:
            return [f"{where}: " + " ".join(str(exc).split())]
        return []
    return [] if actual == expected else [f"{where}: expected {expected!r}, got {actual!r}"]


def _count_tensors(value: Any) -> int:
    if isinstance(value, (list, tuple)):
        return sum(_count_tensors(v) for v in value)
    return int(isinstance(value, torch.Tensor))


def _set_attribute(module: torch.nn.Module, target: str, value: Any) -> None:
    *path, leaf = target.split(".")
    for part in path:
        if not hasattr(module, part):
            module.add_module(part, torch.nn.Module())
        module = getattr(module, part)
    setattr(module, leaf, value)


_TEMPLATE = '''"""kitsune repro of graph {name!r}: run it with ``python repro.py``.

It rebuilds the FX graph below, makes random inputs (fixed seed) with the recorded shapes,
strides, dtypes and devices (integer and bool inputs are drawn from 0 and 1), runs the graph
eagerly and through kitsune with the recorded config, and compares outputs and mutated
inputs. Exit status 0: they match; 1: kitsune fell back, raised, or differs.
Plugin passes installed as entry points run here too; ones added by register_pass do not.
"""
import os

{imports}

from kitsune_backend.repro import InputSpec, main


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
