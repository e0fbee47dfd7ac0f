"""The on-disk kernel cache: generated source -> imported Python module with a Triton kernel.

Layout under ``Config.cache_dir``::

    triton-<version>/src/<sha256 of source>.py      the generated source
    triton-<version>/src/<sha256 of source>.sha256  its checksum, written after the source
    triton/                                         Triton's binaries (unless the user
                                                    set TRITON_CACHE_DIR)

Triton's cache keys compiled binaries by source, device capability and Triton version, so
a second process importing the same source skips compilation. An entry whose text does not
hash to its name, or whose checksum file is missing or different, is corrupt: it is
rewritten, never imported, and :meth:`KernelCache.load` says so to the caller (the
``kernels`` stage turns that into a decline). A process imports each source once:
:class:`KernelCache` holds the modules (one per process, in
:class:`~kitsune_backend.process.ProcessState`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import threading
import types
from typing import Iterator, Optional

import triton

_TRITON_DIR_LOCK = threading.Lock()


def source_hash(source: str) -> str:
    """The content hash that names a source in the cache."""
    return hashlib.sha256(source.encode()).hexdigest()


def source_dir(cache_dir: str) -> str:
    """Where generated sources live for this Triton version."""
    return os.path.join(cache_dir, f"triton-{triton.__version__}", "src")


def triton_dir(cache_dir: str) -> str:
    """Where Triton keeps the binaries of kernels cached under ``cache_dir``: the user's
    ``TRITON_CACHE_DIR`` when set, else ``<cache_dir>/triton``."""
    return os.environ.get("TRITON_CACHE_DIR") or os.path.join(cache_dir, "triton")


@contextlib.contextmanager
def triton_binaries_under(cache_dir: str) -> Iterator[None]:
    """Triton compiles (and looks up) binaries in :func:`triton_dir` of ``cache_dir`` while
    inside: each compile's own ``kernel_cache_dir`` holds its kernels' binaries, not the
    first one of the process. Triton's setting is process-wide, so compiles inside are
    serialized."""
    from triton import knobs

    with _TRITON_DIR_LOCK, knobs.cache.scope():
        knobs.cache.dir = triton_dir(cache_dir)
        yield


def is_kitsune_folder(name: str) -> bool:
    """Whether a top-level name under a cache folder is one kitsune writes: a generated
    sources folder (``triton-<version>``) or the Triton binaries folder (``triton``)."""
    return name == "triton" or name.startswith("triton-")


def cached_sources(cache_dir: str) -> list[str]:
    """The generated sources cached under ``cache_dir``, for every Triton version."""
    found = []
    if not os.path.isdir(cache_dir):
        return found
    for name in sorted(os.listdir(cache_dir)):
        folder = os.path.join(cache_dir, name, "src")
        if name.startswith("triton-") and os.path.isdir(folder):
            found += [os.path.join(folder, f) for f in sorted(os.listdir(folder))
                      if f.endswith(".py")]
    return found


def disk_usage(path: str) -> int:
    """Bytes of the regular files under ``path`` (symbolic links are not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                total += os.path.getsize(full)
    return total


def clear(cache_dir: str) -> list[str]:
    """Remove what kitsune cached under ``cache_dir`` (:func:`is_kitsune_folder`); anything
    else there is left alone. Returns the paths removed."""
    removed = []
    if not os.path.isdir(cache_dir):
        return removed
    for name in sorted(os.listdir(cache_dir)):
        path = os.path.join(cache_dir, name)
        if is_kitsune_folder(name) and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
            removed.append(path)
    return removed


def entry_problem(path: str, digest: str) -> str:
    """What is wrong with the cache entry at ``path`` (``<digest>.py``): ``""`` when it is
    sound, ``"missing"`` when it was never written, else why it is corrupt."""
    checksum = path[: -len(".py")] + ".sha256"
    if not os.path.exists(checksum):
        return "its checksum file is missing" if os.path.exists(path) else "missing"
    try:
        with open(path, "rb") as f:
            text = f.read()
        with open(checksum) as f:
            recorded = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"
    if hashlib.sha256(text).hexdigest() != digest:
        return f"its text ({len(text)} bytes) does not hash to its name"
    if recorded != digest:
        return "its checksum file does not match"
    return ""


def _write_atomic(path: str, text: str) -> None:
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class KernelCache:
    """The generated sources this process imported, by content hash and cache folder: each
    is imported once per folder (a compile with its own ``kernel_cache_dir`` finds its
    sources written there)."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str], types.ModuleType] = {}
        self._lock = threading.Lock()

    def load(self, source: str, cache_dir: str,
             repairs: Optional[list[str]] = None) -> types.ModuleType:
        """Import ``source`` through the disk cache under ``cache_dir`` (once per process and
        source). Returns the module; a missing entry is written first, a corrupt one
        rewritten, and then why it was corrupt is appended to ``repairs`` (when given).
        Raises what writing or importing raises (a full disk, a source that does not
        parse)."""
        digest = source_hash(source)
        key = (digest, os.path.abspath(cache_dir))
        with self._lock:
            module = self._loaded.get(key)
            if module is None:
                module, problem = _import(source, digest, cache_dir)
                self._loaded[key] = module
                if problem and repairs is not None:
                    repairs.append(problem)
            return module


def _import(source: str, digest: str, cache_dir: str) -> tuple[types.ModuleType, str]:
    """The module of ``source`` and what was wrong with its entry ("" when it was sound
    or missing)."""
    folder = source_dir(cache_dir)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{digest}.py")
    problem = entry_problem(path, digest)
    if problem:
        _write_atomic(path, source)
        _write_atomic(path[: -len(".py")] + ".sha256", digest + "\n")
    name = f"kitsune_kernel_{digest[:24]}_{source_hash(os.path.abspath(cache_dir))[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Triton reads the kernel's source through its module
    spec.loader.exec_module(module)
    return module, "" if problem == "missing" else problem
