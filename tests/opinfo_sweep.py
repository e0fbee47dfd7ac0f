"""PyTorch's OpInfo samples run through kitsune with fusing neighbours, against eager.

Each sample's op is placed between pointwise neighbours so that kitsune fuses it where it
can: the first input goes through ``neg(neg(x))`` and every floating output through
``neg(neg(out))``. A region of one op stays an ATen call, so without the neighbours only
about one sample in eight would reach a generated kernel.

A sample counts when ``aot_eager`` runs it and matches eager (an op that ``aot_eager``
itself cannot run, or that draws random numbers, says nothing about kitsune); kitsune must
then match eager, forward and, with ``requires_grad=True`` inputs, every gradient.
:data:`EXCLUDED` lists the ops left out of the sweep altogether, with the reason.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import zlib
from typing import Any, Callable, Optional

import torch
from torch.utils._pytree import tree_leaves, tree_map_only

from tests.helpers import TOLERANCES

# Ops left out of the sweep, with the reason. Everything else that supports the dtype on
# the device is swept.
EXCLUDED = {
    # Random or uninitialised results: no two runs agree, compiled or not.
    "bernoulli": "random", "nn.functional.dropout": "random",
    "nn.functional.dropout2d": "random", "nn.functional.dropout3d": "random",
    "nn.functional.alpha_dropout": "random", "nn.functional.feature_alpha_dropout": "random",
    "nn.functional.rrelu": "random", "normal": "random", "multinomial": "random",
    "randn_like": "random", "rand_like": "random", "randint_like": "random",
    "randn": "random", "rand": "random", "randint": "random", "uniform": "random",
    "cauchy": "random", "exponential": "random", "geometric": "random",
    "log_normal": "random", "nn.functional.fractional_max_pool2d": "random",
    "nn.functional.fractional_max_pool3d": "random",
    "empty": "uninitialised", "empty_like": "uninitialised", "new_empty": "uninitialised",
    "empty_strided": "uninitialised", "new_empty_strided": "uninitialised",
    "empty_permuted": "uninitialised", "nn.functional.multi_head_attention_forward": "random",
    # Sparse layouts: kitsune sees strided tensors only (Dynamo graph-breaks on these).
    "to_sparse": "sparse layout", "sparse.sampled_addmm": "sparse layout",
    "sparse.mm": "sparse layout",
}

# Samples taken per op: the first few cover the regimes (0-dim, broadcast, keyword forms).
SAMPLES_PER_OP = 2


def op_db() -> list[Any]:
    """PyTorch's OpInfo database (imported on first use: it takes a few seconds)."""
    from torch.testing._internal.common_methods_invocations import op_db as ops

    return ops


def swept_ops(device: str, dtype: torch.dtype) -> list[Any]:
    """The OpInfos that support ``dtype`` on ``device`` and are not :data:`EXCLUDED`."""
    return [
        op for op in op_db()
        if op.name not in EXCLUDED and op.supports_dtype(dtype, device)
    ]


def samples(op: Any, device: str, dtype: torch.dtype, requires_grad: bool) -> list[Any]:
    """The first :data:`SAMPLES_PER_OP` samples of ``op`` (same seed, same samples)."""
    torch.manual_seed(zlib.crc32(op.name.encode()))
    grad = requires_grad and op.supports_autograd
    try:
        found = op.sample_inputs(device, dtype, requires_grad=grad)
        return list(itertools.islice(found, SAMPLES_PER_OP))
    except Exception:  # an OpInfo whose sample generator needs something missing here
        return []


def _fusable(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point() and x.layout == torch.strided


def _wrap_out(value: Any) -> Any:
    if _fusable(value):
        return torch.neg(torch.neg(value))
    if isinstance(value, (list, tuple)):
        return type(value)(_wrap_out(v) for v in value) if not hasattr(value, "_fields") \
            else value
    return value


def fused_program(op: Any, sample: Any) -> Callable:
    """``f(x, *args)``: the op on ``neg(neg(x))``, its floating outputs through
    ``neg(neg(.))``; tensors are arguments of ``f`` (so Dynamo sees them as inputs)."""

    def f(x, args, kwargs):
        if _fusable(x):
            x = torch.neg(torch.neg(x))
        return _wrap_out(op(x, *args, **kwargs))

    return f


def _tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in a nest of lists, tuples and dicts."""
    return [t for t in tree_leaves(value) if isinstance(t, torch.Tensor)]


def _fresh_tensor(t: torch.Tensor) -> torch.Tensor:
    """A clone of ``t`` (a leaf keeps its ``requires_grad``)."""
    copy = t.detach().clone()
    return copy.requires_grad_(t.requires_grad) if t.is_leaf else copy


@dataclasses.dataclass
class Outcome:
    """What running one program gave: outputs, input gradients, or the error."""

    outputs: Any = None
    grads: list[Optional[torch.Tensor]] = dataclasses.field(default_factory=list)
    error: Optional[BaseException] = None


def run(fn: Callable, sample: Any) -> Outcome:
    """Call ``fn`` on a fresh copy of the sample; with inputs that need gradients, also
    backpropagate the sum of every floating output (weighted, so no gradient is uniform)."""
    x, args, kwargs = tree_map_only(torch.Tensor, _fresh_tensor,
                                    (sample.input, sample.args, sample.kwargs))
    leaves = [t for t in _tensors((x, args, kwargs)) if t.requires_grad and t.is_leaf]
    try:
        out = fn(x, args, kwargs)
        floating = [t for t in _tensors(out) if _fusable(t) and t.requires_grad]
        grads: list[Optional[torch.Tensor]] = []
        if leaves and floating:
            loss = sum((t * torch.linspace(0.5, 1.5, t.numel(), dtype=t.dtype,
                                           device=t.device).view(t.shape)).sum()
                       for t in floating)
            grads = list(torch.autograd.grad(loss, leaves, allow_unused=True))
        return Outcome(out, grads)
    except Exception as exc:  # noqa: BLE001  (the caller compares what happened)
        return Outcome(error=exc)


def mismatch(actual: Any, expected: Any) -> str:
    """Why ``actual`` differs from ``expected`` beyond the dtype's tolerance ("" if not)."""
    got, want = list(_tensors(actual)), list(_tensors(expected))
    if len(got) != len(want):
        return f"{len(got)} tensors, expected {len(want)}"
    for i, (a, e) in enumerate(zip(got, want)):
        if a.shape != e.shape or a.dtype != e.dtype:
            return f"tensor {i}: {a.dtype}{list(a.shape)}, expected {e.dtype}{list(e.shape)}"
        if e.layout != torch.strided:
            continue
        rtol, atol = TOLERANCES.get(e.dtype, (0, 0))
        try:
            torch.testing.assert_close(a.detach(), e.detach(), rtol=rtol, atol=atol,
                                       equal_nan=True)
        except AssertionError as exc:
            return f"tensor {i}: " + str(exc).splitlines()[0] + " " + " ".join(
                str(exc).splitlines()[1:4])
    if not isinstance(expected, (torch.Tensor, list, tuple)) and not (
        isinstance(expected, float) and math.isnan(expected)
    ) and actual != expected:
        return f"{actual!r}, expected {expected!r}"
    return ""


def compare(case_op: Any, sample: Any, backend: str, options: Optional[dict] = None) -> str:
    """Run the sample's fused program eagerly and compiled with ``backend``; "" when the
    compiled run agrees (or both raise), else what went wrong."""
    program = fused_program(case_op, sample)
    eager = run(program, sample)
    torch._dynamo.reset()
    kwargs = {"options": options} if options else {}
    compiled = torch.compile(program, backend=backend, **kwargs)
    # on CUDA the second call captures the CUDA graph and replays it: check both
    calls = 2 if _on_cuda(sample) else 1
    for call in range(calls):
        why = _difference(run(compiled, sample), eager)
        if why:
            return f"call {call + 1}: {why}" if calls > 1 else why
    return ""


def _on_cuda(sample: Any) -> bool:
    return any(t.is_cuda for t in _tensors((sample.input, sample.args, sample.kwargs)))


def _difference(compiled: Outcome, eager: Outcome) -> str:
    """What differs between a compiled run and the eager one ("" when nothing does)."""
    if eager.error is not None:
        return "" if compiled.error is not None else "eager raised, compiled did not"
    if compiled.error is not None:
        return f"raised {type(compiled.error).__name__}: {str(compiled.error)[:300]}"
    why = mismatch(compiled.outputs, eager.outputs)
    if why:
        return "output " + why
    for i, (a, e) in enumerate(zip(compiled.grads, eager.grads)):
        if (a is None) != (e is None):
            return f"gradient {i}: {'missing' if a is None else 'unexpected'}"
        if a is not None:
            why = mismatch(a, e)
            if why:
                return f"gradient {i}: {why}"
    return ""


@dataclasses.dataclass
class Report:
    """The sweep of one shard: cases run, cases whose op reached a generated kernel, cases
    excused (``aot_eager`` disagrees with eager too) and failures (case id -> what)."""

    run: int = 0
    fused: int = 0
    excused: list[str] = dataclasses.field(default_factory=list)
    failures: dict[str, str] = dataclasses.field(default_factory=dict)


def _kitsune_findings() -> tuple[bool, list[str]]:
    """(whether a generated kernel holds more than the ``neg`` neighbours, kernels that
    did not compile) over the compiles since the history was last cleared."""
    import kitsune_backend

    fused, broken = False, []
    for session in kitsune_backend.history():
        for record in session.records:
            fused |= any(not n.startswith("neg") for k in record.kernels for n in k.nodes)
            broken += [f"{k.name}: {k.compile_error}" for k in record.kernels if k.compile_error]
    return fused, broken


def sweep(device: str, dtype: torch.dtype, requires_grad: bool, shard: int = 0,
          shards: int = 1) -> Report:
    """Every case of the shard through kitsune, against eager (see the module docstring)."""
    import kitsune_backend

    report = Report()
    for op in swept_ops(device, dtype):
        if zlib.crc32(op.name.encode()) % shards != shard:
            continue
        for index, sample in enumerate(samples(op, device, dtype, requires_grad)):
            case = f"{op.name}{'.' + op.variant_test_name if op.variant_test_name else ''}#{index}"
            kitsune_backend.clear_history()
            why = compare(op, sample, "kitsune")
            fused, broken = _kitsune_findings()
            report.run += 1
            report.fused += fused
            if broken and not why:
                why = "a kernel did not compile: " + "; ".join(broken)
            if why and compare(op, sample, "aot_eager"):
                report.excused.append(case)
            elif why:
                report.failures[case] = why
    return report
