"""Running a repro script (:mod:`kitsune_backend.repro` writes them): eager against kitsune.

:func:`main` rebuilds the FX graph from the script's code, makes random inputs from a fixed
seed, runs the graph eagerly and through kitsune's graph compiler, and compares every output
and every input the graph mutates.
"""

from __future__ import annotations

import traceback
from typing import Any, Callable, Optional, Sequence

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from .compiler import compile_graph
from .config import Config
from .repro import TOLERANCES, InputSpec
from .process import PROCESS


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
    session = PROCESS.history.new(config)
    compiled = compile_graph(gm, fake_args, config, kind, session, PROCESS)
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
    print(f"OK: kitsune matches eager ({_count_tensors(expected)} output tensors, "
          f"{_ran_kernels(record)})")
    return 0


def _ran_kernels(record: Any) -> str:
    """How many generated kernels the compiled graph ran, or why none did."""
    count = sum(1 for kernel in record.kernels if not kernel.compile_error)
    if count:
        return f"{count} generated kernel(s) ran"
    why = next((d.reason for d in record.declines if d.stage == "fusion"), "")
    return "no generated kernel ran" + (f": {why}" if why else "")


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
