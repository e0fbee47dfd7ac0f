"""precompile: compile a graph's generated kernels in parallel worker processes, at compile
time.

Without this, Triton compiles each generated kernel at its first launch, one after another,
inside the first call (Triton's compile holds the GIL, so threads do not help).
:func:`precompile` instead asks Triton, for each kernel, for the exact compile request its
first launch would make, hands the requests to the worker processes of
:mod:`kitsune_backend.codegen.compile_pool`, and waits. Workers start only when a graph
has enough kernels left to compile to gain from them (:data:`MIN_KERNELS_FOR_WORKERS`),
as many as it has such kernels (up to ``Config.compile_workers``). Each worker runs that
request's ``triton.compile``, which fills Triton's disk cache under the key the first
launch looks up, so the launch loads the binary instead of compiling it.

Getting the request: ``JITFunction.warmup`` with ``MockTensor`` arguments (one per kernel
pointer argument, data pointer 0, so 16-byte aligned like the arena's and PyTorch's
allocations) specializes the kernel exactly as a launch on real tensors does, and calls
``triton.knobs.runtime.jit_cache_hook`` just before compiling; a hook that returns True
skips the compile. The hook records signature, constants, attributes and options.

Nothing here is fatal: a kernel whose request cannot be captured, whose worker fails, or
that is not precompiled at all simply compiles at its first launch, as before, and the
report says why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import subprocess
import threading
import time
from typing import Any, Callable, Optional, Sequence

import torch
import torch.fx as fx

from ..config import Config
from ..ir import Decline, PassContext, PassResult
from ..log import Progress
from . import cache
from .compile_pool import CompilePool
from .kernel import FusedKernel

STAGE = "precompile"
MIN_KERNELS_FOR_WORKERS = 4
"""Fewer kernels left to compile than this, and no worker is started: they compile at
their first launch. Why four: on a shared 2-core CPU machine (sm_90 target, Triton 3.6) a
worker is ready 0.1 s after it starts and done with its warm-up compile at 0.8 s, while one
generated kernel compiles in 0.1-0.3 s (plus about 0.5 s for its C launcher, on a GPU
machine, when its argument signature is new). Up to three kernels compiled one after
another at their first launch cost about what starting workers costs; from four on, the
workers' parallel compiles win."""
_HOOK_LOCK = threading.Lock()


@dataclasses.dataclass
class PrecompileReport:
    """What :func:`precompile` did for one graph's kernels."""

    kernels: int = 0
    """Kernels that launch (a kernel with an empty grid never compiles)."""
    workers: int = 0
    """Worker processes used (0 when nothing was precompiled)."""
    precompiled: int = 0
    """Kernels a worker compiled into Triton's disk cache."""
    cached: int = 0
    """Kernels already compiled, in this process or in Triton's disk cache."""
    launchers: int = 0
    """Of the precompiled kernels, those whose C launcher a worker built too."""
    launcher_note: str = ""
    """Why a worker could not build a launcher (the first launch builds it then)."""
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    """(kernel, reason) for each kernel left to compile at its first launch by a failure."""
    skipped: str = ""
    """Why nothing was sent to the workers ('' when requests were sent)."""
    seconds: float = 0.0

    def stats(self) -> dict[str, Any]:
        """The numbers for the fusion pass's stats."""
        return {"precompile_seconds": round(self.seconds, 4),
                "kernels_precompiled": self.precompiled,
                "kernels_already_compiled": self.cached,
                "launchers_prebuilt": self.launchers,
                "precompile_workers": self.workers,
                "precompile_failures": len(self.failures)}

    def notes(self) -> list[str]:
        """One line for the pass's notes."""
        if self.skipped:
            return [f"kernels not precompiled: {self.skipped}"]
        notes = [f"{self.precompiled} kernel(s) precompiled on {self.workers} worker(s) in "
                 f"{self.seconds:.2f} s, {self.cached} already compiled"]
        if self.launcher_note:
            notes.append(f"C launchers left to the first launch: {self.launcher_note}")
        return notes

    def declines(self) -> list[Decline]:
        """A decline per kernel a failure left to compile at its first launch."""
        return [Decline(STAGE, f"not compiled ahead, compiles at its first launch: {why}", name)
                for name, why in self.failures]


def why_not_precompile(config: Config, device: Optional[torch.device], pool: CompilePool) -> str:
    """Why kernels for ``device`` are not compiled ahead under ``config`` on ``pool``'s
    workers ('' when they are)."""
    if config.compile_workers == 0:
        return "compile_workers=0: each kernel compiles at its first launch"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "TRITON_INTERPRET=1: kernels are interpreted, there is nothing to compile"
    if device is None or device.type != "cuda":
        return f"kernels on {device}: nothing to compile ahead"
    from triton import knobs

    if knobs.compilation.always_compile:
        return "TRITON_ALWAYS_COMPILE=1: Triton would compile again at the first launch"
    if pool.broken:
        return f"the compile workers could not start in this process: {pool.broken}"
    return ""


def warm_triton(config: Config, pool: CompilePool) -> None:
    """In a daemon thread, so that it overlaps Dynamo's and AOTAutograd's tracing: warm
    Triton up in this process (:func:`_warm_up_triton`) and note the device target that
    workers started later warm up for. Starts no worker process: how many workers a
    compile is worth is known only once its kernels are (:func:`precompile`). Call only
    for CUDA graphs."""
    if not config.fusion or why_not_precompile(config, torch.device("cuda"), pool):
        return

    def start() -> None:
        try:
            from triton.runtime.driver import driver

            pool.target = pool.target or target_list(driver.active.get_current_target())
            _warm_up_triton()
        except Exception:  # the first compile request or launch pays these costs instead
            pass

    threading.Thread(target=start, name="kitsune-warm-triton", daemon=True).start()


def target_list(target: Any) -> list:
    """Triton's ``GPUTarget`` as the JSON list a worker's warm-up takes."""
    return [target.backend, target.arch, target.warp_size]


def _warm_up_triton() -> None:
    """Triton's first-use costs in this process, paid while AOTAutograd traces: the hash of
    Triton's own files (``triton_key``: it reads all of ``libtriton``; hashlib lets other
    threads run meanwhile), its CUDA driver utilities and the
    compiler backend's hash (it asks ptxas for its version). Every compile request and every
    first launch needs them."""
    from triton.compiler.compiler import make_backend
    from triton.runtime.cache import triton_key
    from triton.runtime.driver import driver

    triton_key()
    make_backend(driver.active.get_current_target()).hash()


def precompile_kernels(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Compile the graph's generated kernels on the worker processes now, rather than one
    by one at their first launch (the graph is unchanged)."""
    kernels = {id(n.target): n.target for n in gm.graph.nodes if isinstance(n.target, FusedKernel)}
    if not kernels:
        return PassResult()
    report = precompile(list(kernels.values()), ctx.config, ctx.kernel_device,
                        ctx.process.compile_pool, ctx.progress)
    return PassResult(notes=report.notes(), declines=report.declines(), stats=report.stats())


def precompile(kernels: Sequence[Any], config: Config, device: Optional[torch.device],
               pool: CompilePool, progress: Optional[Progress] = None) -> PrecompileReport:
    """Compile ``kernels`` (:class:`~kitsune_backend.codegen.kernel.FusedKernel`) on the
    worker processes before their first launch; what happened (never raises).

    Workers are used only for at least :data:`MIN_KERNELS_FOR_WORKERS` kernels left to
    compile, and ``min(config.compile_workers, kernels left)`` of them: the pool grows to
    that many (it never shrinks, so a later compile shares the workers an earlier one
    started). Their stderr is discarded unless ``config.debug``. ``progress`` hears how
    many kernels have compiled of how many."""
    start = time.perf_counter()
    report = PrecompileReport()
    # Longest source first (a rough guess at the longest compile): with more kernels than
    # workers, the short ones then fill in behind the long ones instead of following them.
    # A kernel of symbolic sizes (its grid not an int) is left to its first launch: Triton
    # compiles it once per specialisation of its size arguments, known only then.
    launching = sorted((k for k in kernels if isinstance(k.generated.grid, int)
                        and k.generated.grid > 0 and not k.compile_error),
                       key=lambda k: -len(k.generated.source))
    report.kernels = len(launching)
    report.skipped = why_not_precompile(config, device, pool)
    if report.skipped:
        return report
    requests = _requests(launching, report)
    if len(requests) < MIN_KERNELS_FOR_WORKERS:
        report.skipped = (f"{len(requests)} kernel(s) left to compile, fewer than "
                          f"{MIN_KERNELS_FOR_WORKERS}: not worth starting workers, they "
                          "compile at their first launch")
    else:
        report.workers = min(config.compile_workers, len(requests))
        _send(requests, report, pool, config.debug, _counter(len(requests), progress))
    report.seconds = time.perf_counter() - start
    return report


def _requests(launching: Sequence[Any], report: PrecompileReport) -> list[tuple[str, dict]]:
    """(kernel name, request) for each kernel that needs a compile; kernels compiled
    already and requests that cannot be captured are counted in ``report``."""
    requests = []
    for kernel in launching:
        try:
            request = capture_request(kernel)
        except Exception as exc:
            report.failures.append((kernel.__name__, f"request not captured: {_say(exc)}"))
            continue
        if request is None:
            report.cached += 1
        else:
            requests.append((kernel.__name__, request))
    return requests


def _counter(total: int, progress: Optional[Progress]) -> Optional[Callable[[], None]]:
    """A callback that tells ``progress`` one more of ``total`` kernels has compiled."""
    if progress is None:
        return None
    done = itertools.count(1)
    lock = threading.Lock()

    def replied() -> None:
        with lock:
            progress.report(f"kernels compiled {next(done)}/{total}")

    return replied


def _send(requests: list[tuple[str, dict]], report: PrecompileReport, pool: CompilePool,
          debug: bool, replied: Optional[Callable[[], None]] = None) -> None:
    """Have ``report.workers`` workers of ``pool`` compile ``requests``; the replies go
    into ``report``."""
    first = requests[0][1]
    if pool.target is None and "target" in first:  # workers warm up for it
        pool.target = target_list(first["target"])
    pool.worker_stderr = None if debug else subprocess.DEVNULL
    try:
        replies = pool.run([request for _, request in requests], report.workers,
                           replied=replied)
    except Exception as exc:
        replies = [{"ok": False, "error": f"compile pool failed: {_say(exc)}"}] * len(requests)
    for (name, _), reply in zip(requests, replies):
        if reply.get("ok"):
            report.precompiled += 1
            if reply.get("launcher") == "":
                report.launchers += 1
            else:
                report.launcher_note = str(reply.get("launcher", "the worker did not say"))
        else:
            report.failures.append((name, str(reply.get("error", "no reason given"))))


def _say(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def capture_request(kernel: Any) -> Optional[dict]:
    """The worker request for ``kernel``'s first launch, or ``None`` when it needs no
    compile (compiled already in this process, or found in Triton's disk cache)."""
    fn = kernel._launch_fn
    generated = kernel.generated
    captured = _capture(fn, [s.dtype for s in (*generated.inputs, *generated.outputs)],
                        (generated.grid,), generated.config.num_warps)
    if captured is None:
        return None
    from triton._C.libtriton import get_cache_invalidating_env_vars
    from triton.runtime.driver import driver

    spec = json.loads(captured["specialization_data"])
    request = {
        "path": os.path.join(cache.source_dir(kernel.cache_dir),
                             f"{cache.source_hash(generated.source)}.py"),
        "module": fn.__module__,
        "name": fn.__name__,
        "signature": captured["signature"],
        "constants": captured["constants"],
        "attrs": captured["configs"][0],
        "options": {key: _tuples(value) for key, value in spec["options"].items()},
        "target": driver.active.get_current_target(),
        "cache_dir": cache.triton_dir(kernel.cache_dir),
        "env": get_cache_invalidating_env_vars(),
    }
    with cache.triton_binaries_under(kernel.cache_dir):
        found = _in_disk_cache(fn, request)
    return None if found else request


def _capture(fn: Any, dtypes: list[torch.dtype], grid: tuple[int, ...],
             num_warps: int) -> Optional[dict]:
    """Triton's compile arguments for launching ``fn`` on tensors of ``dtypes``, taken from
    ``jit_cache_hook`` without compiling; ``None`` when ``fn`` is compiled already."""
    from triton import knobs

    captured: dict = {}

    with _HOOK_LOCK:
        previous = knobs.runtime.jit_cache_hook

        def hook(**kwargs: Any) -> Any:
            if kwargs["fn"].jit_function is fn:
                captured.update(kwargs["compile"])
                return True  # skip the compile: a worker does it
            return previous(**kwargs) if previous is not None else None

        knobs.runtime.jit_cache_hook = hook
        try:
            fn.warmup(*dtypes, grid=grid, num_warps=num_warps)
        finally:
            knobs.runtime.jit_cache_hook = previous
    return captured or None


def _tuples(value: Any) -> Any:
    """JSON turned the options' tuples into lists; Triton hashes options, so turn them back."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _in_disk_cache(fn: Any, request: dict) -> bool:
    """Whether Triton's disk cache holds this request's binary: the lookup
    ``triton.compile`` starts with. Any doubt counts as 'no' (a worker then finds out)."""
    try:
        from triton.compiler.compiler import ASTSource, make_backend
        from triton.runtime.cache import get_cache_key, get_cache_manager

        src = ASTSource(fn, request["signature"], request["constants"], request["attrs"])
        backend = make_backend(request["target"])
        options = backend.parse_options(dict(request["options"], **src.parse_options()))
        key = get_cache_key(src, backend, options, env_vars=request["env"])
        manager = get_cache_manager(hashlib.sha256(key.encode("utf-8")).hexdigest())
        group = manager.get_group(f"{src.name[:150]}.json") or {}
        return group.get(f"{src.name[:150]}.json") is not None
    except Exception:
        return False
