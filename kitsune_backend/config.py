"""One typed, frozen configuration for a kitsune compile.

Where a setting comes from, lowest precedence first:

1. the defaults below,
2. ``KITSUNE_<FIELD>`` environment variables (``KITSUNE_FUSION=0``, ``KITSUNE_NUM_STREAMS=8``),
3. :func:`patch` context managers (innermost wins),
4. ``torch.compile(..., mode=..., options={...})`` or :func:`kitsune_backend.compile`.

Every source is validated the same way: an unknown name or a value of the wrong type is a
:class:`KitsuneConfigError` (a ``ValueError``) that lists what is valid. Types are strict in
code (``num_streams="4"`` and ``fusion="false"`` are errors; an int is accepted where a
float is expected); only environment variables, which are strings, are parsed. The
environment is checked when the package is imported (:func:`check_environment`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from typing import Any, Iterator, Mapping

from .errors import KitsuneConfigError

ENV_PREFIX = "KITSUNE_"
MATMUL_KERNELS = ("auto", "always", "never")
"""The values of the ``matmul_kernels`` option."""
BATCH_BUCKETS = ("pow2", "off")
"""The values of the ``batch_buckets`` option."""

# mode -> the settings it implies. ``None`` and "default" change nothing.
MODES: dict[str | None, dict[str, Any]] = {
    None: {},
    "default": {},
    "reduce-overhead": {"cuda_graphs": True},
    "max-autotune": {"autotune": True, "cuda_graphs": True},
    "max-autotune-no-cudagraphs": {"autotune": True, "cuda_graphs": False},
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of a kitsune compile. Instances are immutable; use :meth:`replace`."""

    fusion: bool = True
    """Group pointwise and reduction ops into generated Triton kernels."""
    constant_folding: bool = True
    """Compute values that depend on no input (masks built from ``arange``, say) once, at
    compile time, and read them from a buffer."""
    matmul_kernels: str = "auto"
    """Where a matmul's bias add would be a kernel of its own (nothing fusable follows it),
    generate one Triton kernel for both: ``"auto"`` where it times no slower than cuBLAS's
    ``mm`` plus the add on the CUDA device (never off CUDA), ``"always"``, or ``"never"``."""
    streams: bool = True
    """Run independent kernels concurrently on several CUDA streams."""
    num_streams: int = 8
    """Most streams one compiled graph may use (the caller's stream included)."""
    stream_memory_budget: float = 0.10
    """How far a multi-stream plan may raise a graph's peak memory over the same graph on one
    stream, as a fraction of that single-stream peak (its arena plus its inputs, parameters
    and outputs; 0.10: by 10% at most; 0: not at all; ``inf``: no limit). A side stream
    costs the buffers it keeps live, and a cuBLAS workspace (32 MiB on Hopper) if it runs a
    matmul. Where the plan would go over, the memory plan puts the side-stream branches that
    cost the most bytes per microsecond of overlap back onto their predecessor's stream,
    until it fits (with ``memory_pool=False`` there is no arena, and nothing is weighed)."""
    cuda_graphs: bool = True
    """Capture the whole schedule into one CUDA graph and replay it."""
    capture_shapes: int = 8
    """Most input-shape signatures (tensor shapes and the values of size inputs, after
    batch padding) of one compiled graph of symbolic sizes whose CUDA graphs are kept; a new
    signature past that drops the captures of the least recently used one."""
    batch_buckets: str = "pow2"
    """Where a graph of symbolic sizes keeps the rows of its batch apart (checked on the
    graph), pad the batch up to a bucket before a captured call, so that a serving loop needs
    few captures, and slice the outputs back: ``"pow2"`` (the next power of two), or
    ``"off"`` (one capture per batch size)."""
    memory_pool: bool = True
    """Plan one arena per compiled graph; generated kernels write their outputs into it. The
    graphs of one compile (a forward and its backward) share one buffer for their arenas."""
    autotune: bool = False
    """Benchmark a few launch configurations per kernel on the device (``max-autotune``)."""
    kernel_cache_dir: str = ""
    """Where compiled kernels are cached on disk; empty means ``~/.cache/kitsune_backend``."""
    compile_workers: int = dataclasses.field(
        default=min(16, max(0, (os.cpu_count() or 1) - 1)),
        metadata={"default_doc": "min(16, CPU cores - 1)"},
    )
    """Most processes that compile a graph's generated kernels in parallel, at compile time
    (0: each kernel compiles in the calling process at its first launch). They start only
    for a graph with at least 4 kernels left to compile, as many as it has such kernels,
    and later compiles share them."""
    debug_dir: str = ""
    """Dump every stage of every compiled graph under this folder (empty: no dump)."""
    debug_schedule: bool = False
    """With ``debug_dir`` set: profile each compiled graph's third call (its first CUDA-graph
    replay) and add its measured kernel schedule to the graph's dump folder
    (``schedule_measured.json``, ``.txt``, ``.png``). PyTorch's profiler leaves later CUDA
    calls of the process slower on the host, so do not time a process that uses it."""
    debug: bool = False
    """Check the IR invariants after every pass."""
    strict: bool = False
    """Raise on any internal failure instead of falling back to the ATen graph."""
    stream_debug_delays: bool = False
    """Inject random sleeps at the start of each stream's work (finds missing events)."""

    def replace(self, **changes: Any) -> "Config":
        """Return a copy with ``changes`` applied, validated like any other source."""
        _check_names(changes, source="config")
        merged = {**dataclasses.asdict(self), **changes}
        return _build(merged, source="config")

    @property
    def cache_dir(self) -> str:
        """The kernel cache folder actually used."""
        return self.kernel_cache_dir or os.path.join(
            os.path.expanduser("~"), ".cache", "kitsune_backend"
        )


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Config)}

_patches: contextvars.ContextVar[tuple[Mapping[str, Any], ...]] = contextvars.ContextVar(
    "kitsune_config_patches", default=()
)


def valid_names() -> str:
    """The valid option names, as one comma-separated string for error messages."""
    return ", ".join(sorted(FIELDS))


def _check_names(values: Mapping[str, Any], source: str) -> None:
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise KitsuneConfigError(
            f"unknown kitsune {source} option(s) {unknown}; valid options are: {valid_names()}"
        )


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
_ARTICLE = {bool: "a", int: "an", float: "a", str: "a"}


def _coerce(name: str, value: Any, source: str) -> Any:
    """Check one value against its field's type. Only the environment's strings are parsed
    (``"0"``, ``"off"``, ``"8"``, ``"0.25"``); in code a value must already have the field's
    type (an int will do for a float)."""
    kind = type(FIELDS[name].default)
    parse = source == "environment" and isinstance(value, str)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if parse and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if parse and value.strip().lstrip("-").isdigit():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if parse:
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
    raise KitsuneConfigError(
        f"kitsune {source} option {name!r} must be {_ARTICLE[kind]} {kind.__name__}, "
        f"got {value!r} ({type(value).__name__})"
    )


def _build(values: Mapping[str, Any], source: str) -> Config:
    coerced = {name: _coerce(name, value, source) for name, value in values.items()}
    if coerced.get("num_streams", 1) < 1:
        raise KitsuneConfigError(
            f"kitsune option 'num_streams' must be at least 1, got {coerced['num_streams']}"
        )
    if coerced.get("compile_workers", 0) < 0:
        raise KitsuneConfigError(
            "kitsune option 'compile_workers' must be 0 (compile in this process) or more, "
            f"got {coerced['compile_workers']}"
        )
    budget = coerced.get("stream_memory_budget", 0.0)
    if not budget >= 0.0:  # NaN fails this test too
        raise KitsuneConfigError(
            "kitsune option 'stream_memory_budget' must be a fraction >= 0 (0.1: a graph's "
            f"peak may grow 10% over one stream's; inf: no limit), got {budget}"
        )
    if coerced.get("capture_shapes", 1) < 1:
        raise KitsuneConfigError(
            f"kitsune option 'capture_shapes' must be at least 1, got {coerced['capture_shapes']}"
        )
    if coerced.get("batch_buckets", "pow2") not in BATCH_BUCKETS:
        raise KitsuneConfigError(
            f"kitsune option 'batch_buckets' must be one of {', '.join(BATCH_BUCKETS)}, "
            f"got {coerced['batch_buckets']!r}"
        )
    if coerced.get("matmul_kernels", "auto") not in MATMUL_KERNELS:
        raise KitsuneConfigError(
            f"kitsune option 'matmul_kernels' must be one of {', '.join(MATMUL_KERNELS)}, "
            f"got {coerced['matmul_kernels']!r}"
        )
    return Config(**coerced)


def from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings named by ``KITSUNE_*`` variables; an unknown ``KITSUNE_*`` is an error.

    Variables listed in ``_NOT_CONFIG`` carry the prefix but are read elsewhere.
    """
    environ = os.environ if environ is None else environ
    found = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key in _NOT_CONFIG:
            continue
        name = key[len(ENV_PREFIX):].lower()
        if name not in FIELDS:
            raise KitsuneConfigError(
                f"unknown environment variable {key}; valid ones are "
                + ", ".join(ENV_PREFIX + n.upper() for n in sorted(FIELDS))
                + " (and KITSUNE_LOG, read by the logging setup)"
            )
        found[name] = _coerce(name, value, source="environment")
    return found


# Environment variables with the prefix that are read elsewhere, not config fields.
_NOT_CONFIG = frozenset({"KITSUNE_TEST_GPU", "KITSUNE_LOG"})


def check_environment() -> None:
    """Raise :class:`KitsuneConfigError` now if a ``KITSUNE_*`` variable is unknown or has a
    bad value (the package calls this when it is imported, so a typo fails at once)."""
    from_env()


@contextlib.contextmanager
def patch(**changes: Any) -> Iterator[None]:
    """Override settings for compiles started inside the ``with`` block.

    >>> with kitsune_backend.config.patch(num_streams=1, cuda_graphs=False):
    ...     compiled = torch.compile(model, backend="kitsune")
    ...     compiled(x)   # compiled here, so one stream and no CUDA graph
    """
    _check_names(changes, source="patch")
    for name, value in changes.items():
        _coerce(name, value, source="patch")
    token = _patches.set(_patches.get() + (dict(changes),))
    try:
        yield
    finally:
        _patches.reset(token)


def resolve(mode: str | None = None, options: Mapping[str, Any] | None = None) -> Config:
    """The config for one compile: defaults, then environment, patches, mode, options.

    ``options`` may hold ``"mode"`` too: ``torch.compile`` refuses ``mode`` and ``options``
    together, so ``options={"mode": "max-autotune", "num_streams": 4}`` is how a
    ``torch.compile`` user combines them.
    """
    options = dict(options or {})
    if "mode" in options:
        in_options = options.pop("mode")
        if mode is not None and in_options != mode:
            raise KitsuneConfigError(
                f"kitsune mode given twice: {mode!r} and options['mode']={in_options!r}"
            )
        mode = in_options
    if not isinstance(mode, (str, type(None))) or mode not in MODES:
        raise KitsuneConfigError(
            f"unknown kitsune mode {mode!r}; valid modes are: "
            + ", ".join(repr(m) for m in MODES)
        )
    _check_names(options, source="compile")
    options = {name: _coerce(name, value, "compile") for name, value in options.items()}
    conflicts = {k for k, v in MODES[mode].items() if k in options and options[k] != v}
    if conflicts:
        raise KitsuneConfigError(
            f"kitsune mode {mode!r} sets {sorted(conflicts)} but options say otherwise; "
            "drop the mode or the option"
        )
    if options.get("streams") is False and options.get("num_streams", 1) > 1:
        raise KitsuneConfigError(
            "conflicting kitsune options: streams=False with num_streams="
            f"{options['num_streams']}; set one of them"
        )
    values: dict[str, Any] = {}
    values.update(from_env())
    for layer in _patches.get():
        values.update(layer)
    values.update(MODES[mode])
    values.update(options)
    return _build(values, source="compile")
