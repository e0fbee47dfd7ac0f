"""``kitsune doctor``: is this machine ready to compile with kitsune? One small function per
check, each returning a :class:`CheckResult` (what :mod:`kitsune_backend.cli` prints)::

    ok    torch: 2.13.0+cpu (needs >= 2.11)
    FAIL  kernel cache: /data/kitsune is not writable: [Errno 13] Permission denied: ...
          fix: choose a writable folder: --cache-dir DIR here; for compiles ...

Without CUDA, generated kernels run only under Triton's interpreter, which must be switched
on (``TRITON_INTERPRET=1``) before Triton is imported; this process has imported it already,
so :func:`check_kernel` then compiles and runs its probe in a child Python process. Nothing
here starts compile workers (the probe compiles with ``compile_workers=0``).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Optional

from .codegen import cache
from .config import Config, patch, resolve
from .errors import KitsuneConfigError
from .plugins import ENTRY_POINT_GROUP, PassRegistry

MIN_TORCH = (2, 11)
MIN_TRITON = (3, 6)
BACKEND_ENTRY_POINT = "kitsune_backend.backend:kitsune"
PROBE_MARKER = "KITSUNE_DOCTOR_PROBE "
"""Prefix of the line the probe's child process prints its result on (as JSON)."""
PROBE_TIMEOUT_S = 300.0


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One check: its name, whether it passed, what was found and, on failure, the fix."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def lines(self) -> list[str]:
        """The printed form: ``ok|FAIL  <name>: <detail>``, then ``fix: ...`` on failure."""
        found = [f"{'ok' if self.ok else 'FAIL':<4}  {self.name}: {self.detail}"]
        if not self.ok and self.fix:
            found.append(f"      fix: {self.fix}")
        return found


def version_tuple(text: str) -> tuple[int, ...]:
    """The leading ``major.minor[.patch]`` numbers of a version string (``2.13.0+cpu``)."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if match is None:
        return ()
    return tuple(int(part) for part in match.groups() if part is not None)


def _version_check(name: str, found: str, minimum: tuple[int, ...], fix: str) -> CheckResult:
    wanted = ".".join(map(str, minimum))
    ok = version_tuple(found)[: len(minimum)] >= minimum
    return CheckResult(name, ok, f"{found} (needs >= {wanted})", "" if ok else fix)


def check_torch() -> CheckResult:
    """PyTorch is recent enough (and which of its gaps kitsune filled at import)."""
    import torch

    from . import torch_compat

    result = _version_check("torch", torch.__version__, MIN_TORCH,
                            f"pip install 'torch>={'.'.join(map(str, MIN_TORCH))}'")
    if not torch_compat.REGISTERED:
        return result
    added = ", ".join(f"aten.{name}" for name in torch_compat.REGISTERED)
    return dataclasses.replace(result, detail=f"{result.detail}; Meta kernels this torch "
                                              f"lacks, added by kitsune: {added}")


def check_triton() -> CheckResult:
    """Triton is recent enough."""
    import triton

    return _version_check("triton", triton.__version__, MIN_TRITON,
                          f"pip install 'triton>={'.'.join(map(str, MIN_TRITON))}' (torch's "
                          "CUDA wheels bring a matching one)")


def check_cuda() -> CheckResult:
    """The CUDA device, if any (none is not a failure: kernels then run only interpreted)."""
    import torch

    if not torch.cuda.is_available():
        return CheckResult("cuda", True, "not available: generated kernels run only under "
                           "TRITON_INTERPRET=1 on CPU tensors (slow; for tests), and there "
                           "are no streams or CUDA graphs")
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return CheckResult("cuda", True, f"{torch.cuda.get_device_name(index)} (cuda:{index}, "
                       f"capability {major}.{minor}, CUDA {torch.version.cuda})")


def check_config() -> CheckResult:
    """The ``KITSUNE_*`` environment variables name real options with valid values."""
    names = sorted(k for k in os.environ if k.startswith("KITSUNE_"))
    try:
        resolve()
    except KitsuneConfigError as exc:
        return CheckResult("config", False, str(exc),
                           "unset or correct that KITSUNE_* environment variable")
    shown = ", ".join(names) if names else "none set"
    return CheckResult("config", True, f"KITSUNE_* environment variables: {shown}")


def default_cache_dir() -> str:
    """The kernel cache folder compiles would use here (``KITSUNE_KERNEL_CACHE_DIR``
    included; the default when the environment does not resolve)."""
    try:
        return resolve().cache_dir
    except KitsuneConfigError:
        return Config().cache_dir


def check_cache_dir(cache_dir: str) -> CheckResult:
    """The kernel cache folder exists or can be created, and a file can be written in it."""
    name = "kernel cache"
    fix = ("choose a writable folder: --cache-dir DIR here; for compiles "
           "KITSUNE_KERNEL_CACHE_DIR=DIR or options={'kernel_cache_dir': DIR}")
    existed = os.path.isdir(cache_dir)
    try:
        os.makedirs(cache_dir, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=cache_dir, prefix=".doctor_")
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        return CheckResult(name, False, f"{cache_dir} is not writable: {exc}", fix)
    count = len(cache.cached_sources(cache_dir))
    state = f"writable, {count} cached kernel(s)" if existed else "created, writable"
    return CheckResult(name, True, f"{cache_dir} ({state})")


def _pointwise(x):
    return (x.sin() + 1).relu()


def probe_kernel(device: str, cache_dir: str) -> CheckResult:
    """Compile ``(x.sin() + 1).relu()`` with kitsune on ``device`` in this process, compare
    it with eager, and check that a generated kernel itself ran (not its ATen fallback).
    On the CPU, call only with ``TRITON_INTERPRET=1`` set before Triton was imported."""
    import torch

    from .backend import kitsune
    from .inspection import history

    before = [s.id for s in history()]
    try:
        x = torch.randn(1000, device=device)
        torch._dynamo.reset()  # a fresh compile, so the history gets a new session
        with patch(kernel_cache_dir=cache_dir, compile_workers=0):
            out = torch.compile(_pointwise, backend=kitsune)(x)
        sessions = [s for s in history() if s.id not in before]
        record = sessions[-1].forward if sessions else None
    except Exception as exc:  # report any failure, whatever raised it
        message = " ".join(str(exc).split())[:500]
        return CheckResult("kernel", False, f"compiling on {device} raised "
                           f"{type(exc).__name__}: {message}", _KERNEL_FIX)
    if record is None:
        return CheckResult("kernel", False, "torch.compile never called kitsune", _KERNEL_FIX)
    problem = _probe_problem(record, torch.allclose(out, _pointwise(x), rtol=1e-5, atol=1e-6))
    if problem:
        return CheckResult("kernel", False, f"on {device}: {problem}", _KERNEL_FIX)
    names = ", ".join(k.name for k in record.kernels if _ran(k))
    where = "cpu under TRITON_INTERPRET=1" if device == "cpu" else device
    return CheckResult("kernel", True, f"{names} compiled and ran on {where}, matches eager")


_KERNEL_FIX = ("rerun with KITSUNE_STRICT=1 to see the full error, or compile with "
               "options={'debug_dir': DIR} and report the dump")


def _ran(kernel_record) -> bool:
    return bool(getattr(kernel_record.kernel, "launched", False))


def _probe_problem(record, matches: bool) -> str:
    """What went wrong in the probe's compile record ('' when nothing did)."""
    if record.fallback_reason:
        return f"the graph fell back to ATen: {record.fallback_reason}"
    if not record.kernels:
        return "no kernel was generated: " + ("; ".join(d.reason for d in record.declines)
                                              or "no reason recorded")
    errors = [f"{k.name}: {k.compile_error}" for k in record.kernels if k.compile_error]
    if errors:
        return "the kernel did not compile: " + "; ".join(errors)
    if not any(_ran(k) for k in record.kernels):
        reasons = {getattr(k.kernel, "last_fallback_reason", "") for k in record.kernels}
        return "no generated kernel ran: " + "; ".join(sorted(r for r in reasons if r))
    return "" if matches else "the output differs from eager"


def _probe_child_main() -> None:
    """The child process's side of :func:`probe_in_subprocess` (argv[1]: the cache dir)."""
    result = probe_kernel("cpu", sys.argv[1])
    print(PROBE_MARKER + json.dumps(dataclasses.asdict(result)), flush=True)


def probe_in_subprocess(cache_dir: str, timeout: float = PROBE_TIMEOUT_S) -> CheckResult:
    """:func:`probe_kernel` on the CPU in a child Python with ``TRITON_INTERPRET=1``."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    code = "from kitsune_backend.doctor import _probe_child_main; _probe_child_main()"
    try:
        done = subprocess.run([sys.executable, "-c", code, cache_dir], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return CheckResult("kernel", False, f"the probe took over {timeout:.0f} s", _KERNEL_FIX)
    for line in done.stdout.splitlines():
        if line.startswith(PROBE_MARKER):
            return CheckResult(**json.loads(line[len(PROBE_MARKER):]))
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return CheckResult("kernel", False, f"the probe process exited with {done.returncode}: "
                       f"{tail}", _KERNEL_FIX)


def check_kernel(cache_dir: str) -> CheckResult:
    """A tiny generated kernel compiles and runs: on CUDA here, else interpreted in a child."""
    import torch

    if torch.cuda.is_available():
        return probe_kernel("cuda", cache_dir)
    return probe_in_subprocess(cache_dir)


def check_backend_entry_point() -> CheckResult:
    """Dynamo finds ``backend="kitsune"`` through the ``torch_dynamo_backends`` entry point."""
    found = [ep for ep in importlib.metadata.entry_points(group="torch_dynamo_backends")
             if ep.name == "kitsune"]
    fix = "install the package: pip install kitsune-backend (from a clone: pip install -e .)"
    if not found:
        return CheckResult("entry point", False, "no torch_dynamo_backends entry point "
                           "'kitsune': torch.compile(backend='kitsune') fails by name", fix)
    values = sorted({ep.value for ep in found})
    if values != [BACKEND_ENTRY_POINT]:
        return CheckResult("entry point", False, f"'kitsune' points to {', '.join(values)}, "
                           f"not {BACKEND_ENTRY_POINT}", "reinstall: " + fix)
    return CheckResult("entry point", True, f"torch_dynamo_backends: kitsune = {values[0]}")


def check_plugins(registry: Optional[PassRegistry] = None) -> CheckResult:
    """Every ``kitsune_backend.passes`` entry point loads (default: the process registry)."""
    if registry is None:
        from .process import PROCESS

        registry = PROCESS.plugins
    names = sorted({ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})
    broken = registry.broken()
    if broken:
        listed = "; ".join(f"{b.name} ({b.error})" for b in broken)
        return CheckResult("plugins", False, f"{len(broken)} of {len(names)} failed to load: "
                           f"{listed}", "fix or uninstall the package that provides it; "
                           "meanwhile every compile skips it and reports it")
    if not names:
        return CheckResult("plugins", True, f"none installed (entry point group "
                           f"{ENTRY_POINT_GROUP})")
    return CheckResult("plugins", True, f"{len(names)} loaded: {', '.join(names)}")


def run_checks(cache_dir: Optional[str] = None) -> list[CheckResult]:
    """Every check in order; the kernel probe is not tried when the config or the kernel cache
    check failed (it would fail the same way, less clearly)."""
    cache_dir = cache_dir or default_cache_dir()
    results = [check_torch(), check_triton(), check_cuda(), check_config(),
               check_cache_dir(cache_dir)]
    blocking = [r.name for r in results if not r.ok and r.name in ("config", "kernel cache")]
    if blocking:
        results.append(CheckResult("kernel", False, f"not tried: {' and '.join(blocking)} "
                                   "failed (see above)", f"fix {' and '.join(blocking)} first"))
    else:
        results.append(check_kernel(cache_dir))
    results += [check_backend_entry_point(), check_plugins()]
    return results
