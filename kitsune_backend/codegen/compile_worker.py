"""The compile worker: a separate Python process that compiles generated kernels with Triton.

Triton's compile holds the GIL, so threads do not overlap compiles; processes do.
:mod:`kitsune_backend.codegen.compile_pool` starts each worker as
``python -c <bootstrap> <this file> <the parent's sys.path as JSON> <device target as
JSON>``: the bootstrap loads this file by path, so the worker imports neither
``kitsune_backend`` nor ``torch`` (only the standard library and ``triton``), never
initialises CUDA, and never re-runs the user's main script (what ``multiprocessing``'s
spawn start method would do).

Protocol: the worker first writes ``{"ready": True}`` once Triton is imported, and warms
Triton up (:func:`warm_up`, while the parent is still tracing); then the parent sends one
pickled request dict per kernel on the worker's stdin (``multiprocessing.connection``
framing) and reads one reply dict on the worker's original
stdout; anything else the worker prints goes to stderr (which the pool points at
``/dev/null`` unless debugging). End of input, or a reply pipe nobody reads any more, ends
the worker with exit code 0 and nothing printed.

A request holds only plain data, captured in the parent from Triton's own compile request
(see :mod:`kitsune_backend.codegen.precompile`)::

    path, module      the cached kernel source file and the module name to import it as
    name              the @triton.jit function in it
    signature, constants, attrs, options, target
                      exactly what JITFunction._do_compile would pass to triton.compile
    cache_dir         TRITON_CACHE_DIR to compile into
    env               Triton's cache-invalidating environment variables in the parent

:func:`compile_request` runs what ``JITFunction._do_compile`` runs (``triton.compile(
ASTSource(fn, signature, constants, attrs), target=target, options=options)``), which
stores the binary in Triton's disk cache under the key the parent's first launch looks up,
then builds the kernel's C launcher into the same cache (:func:`build_launcher`).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import time
from typing import Any, Optional

_MODULES: dict[str, Any] = {}


def _module(path: str, name: str) -> Any:
    """Import the kernel source at ``path`` as module ``name`` (once per worker)."""
    module = _MODULES.get(path)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # Triton reads the kernel's source through its module
        spec.loader.exec_module(module)
        _MODULES[path] = module
    return module


def _use_environment(request: dict) -> str:
    """Point Triton at the request's cache and environment; why not ('' when done)."""
    from triton._C.libtriton import get_cache_invalidating_env_vars

    os.environ["TRITON_CACHE_DIR"] = request["cache_dir"]
    os.environ.pop("TRITON_INTERPRET", None)
    for key, value in request["env"].items():
        os.environ[key] = value
    have = get_cache_invalidating_env_vars()
    if have != request["env"]:
        return (f"the worker's Triton environment {have} differs from the parent's "
                f"{request['env']}, so its binary would not be found")
    return ""


def compile_request(request: dict) -> dict:
    """Compile one kernel into Triton's disk cache; the reply (never raises).

    The reply is ``{"ok": True, "seconds": s, "cache_hit": bool}`` or
    ``{"ok": False, "error": "..."}``.
    """
    start = time.perf_counter()
    try:
        why = _use_environment(request)
        if why:
            return {"ok": False, "error": why}
        import triton
        from triton import knobs
        from triton.compiler import ASTSource

        fn = getattr(_module(request["path"], request["module"]), request["name"])
        hits: list[bool] = []
        knobs.compilation.listener = lambda **kw: hits.append(kw.get("cache_hit", False))
        try:
            kernel = triton.compile(
                ASTSource(fn, request["signature"], request["constants"], request["attrs"]),
                target=request["target"],
                options=request["options"],
            )
        finally:
            knobs.compilation.listener = None
        return {"ok": True, "seconds": time.perf_counter() - start,
                "cache_hit": bool(hits and hits[0]), "launcher": build_launcher(kernel)}
    except BaseException as exc:  # noqa: BLE001 - the reply carries any failure back
        text = str(exc).strip().splitlines()
        return {"ok": False, "error": f"{type(exc).__name__}: {text[-1] if text else ''}"[:500]}


def build_launcher(kernel: Any) -> str:
    """Build the compiled kernel's C launcher into Triton's cache as well; '' when built,
    else why not (never raises: the parent's first launch then builds it).

    Triton launches a kernel through a small C extension made for its argument signature,
    compiled with the C compiler (about half a second) at the first launch of each new
    signature and cached on disk by its source; building it here takes that off the first
    call too. It needs the C compiler and the CUDA headers Triton ships, not a GPU."""
    try:
        from triton.backends.nvidia.driver import CudaLauncher

        CudaLauncher(kernel.src, kernel.metadata)
        return ""
    except Exception as exc:  # noqa: BLE001 - optional: the first launch builds it
        text = str(exc).strip().splitlines()
        return f"not built: {type(exc).__name__}: {text[-1] if text else ''}"[:300]


def _add_one(x_ptr, n, BLOCK: tl.constexpr):  # noqa: F821 - ``tl`` is bound by warm_up
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # noqa: F821
    tl.store(x_ptr + offsets, tl.load(x_ptr + offsets, mask=offsets < n) + 1,  # noqa: F821
             mask=offsets < n)


def warm_up(target: Optional[list]) -> str:
    """Pay Triton's first-compile costs in this worker before its first request: the hash
    of Triton's own files (``triton_key``, about half a second, once per process) and, for
    ``target`` (``[backend, arch, warp_size]``, the parent's device), one tiny compile into
    a throwaway cache (the compiler's own set-up: MLIR, LLVM, ptxas), which makes a
    worker's first kernel several times slower than its later ones.

    Returns '' when done, else why not (never raises: the first request pays instead)."""
    global tl
    previous = os.environ.get("TRITON_CACHE_DIR")
    try:
        import triton
        import triton.language as tl
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from triton.runtime.cache import triton_key

        triton_key()
        if target is None:
            return "no target: only Triton's own hash was computed"
        with tempfile.TemporaryDirectory(prefix="kitsune-warm-") as folder:
            os.environ["TRITON_CACHE_DIR"] = folder
            source = ASTSource(triton.jit(_add_one), {"x_ptr": "*fp32", "n": "i32",
                                                      "BLOCK": "constexpr"}, {"BLOCK": 128})
            triton.compile(source, target=GPUTarget(*target))
        return ""
    except BaseException as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"[:300]
    finally:
        if previous is None:
            os.environ.pop("TRITON_CACHE_DIR", None)
        else:
            os.environ["TRITON_CACHE_DIR"] = previous


def main() -> None:
    """Serve requests from stdin until it closes (``sys.argv[3]``, when given, is the JSON
    target for :func:`warm_up`). A pipe that closes under the worker (the parent exited,
    or closed the pool while this worker compiled) ends it quietly, with exit code 0."""
    import json
    from multiprocessing.connection import Connection

    replies = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # stray prints (Triton, ptxas) must not corrupt the reply stream
    requests = Connection(0, writable=False)
    import triton  # noqa: F401  (imported before the first request: start-up overlaps tracing)
    import triton.compiler  # noqa: F401

    try:
        replies.send({"ready": True, "pid": os.getpid()})
        warm_up(json.loads(sys.argv[3]) if len(sys.argv) > 3 else None)
        while True:
            replies.send(compile_request(requests.recv()))
    except (EOFError, OSError):  # BrokenPipeError included: the parent is gone
        return
