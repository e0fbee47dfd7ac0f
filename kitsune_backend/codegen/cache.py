"""The on-disk kernel cache: generated source -> imported Python module with a Triton kernel.

Layout under ``Config.cache_dir``::

    triton-<version>/src/<sha256 of source>.py      the generated source
    triton-<version>/src/<sha256 of source>.sha256  its checksum, written after the source
    triton/                                         Triton's own cache (TRITON_CACHE_DIR)

Triton's cache keys compiled binaries by source, device capability and Triton version, so
a second process importing the same source skips compilation. An entry whose text does not
hash to its name, or whose checksum file is missing or different, is corrupt: it is
rewritten, never imported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
import types

import triton

_LOADED: dict[str, types.ModuleType] = {}
_LOCK = threading.Lock()


def source_hash(source: str) -> str:
    """The content hash that names a source in the cache."""
    return hashlib.sha256(source.encode()).hexdigest()


def source_dir(cache_dir: str) -> str:
    """Where generated sources live for this Triton version."""
    return os.path.join(cache_dir, f"triton-{triton.__version__}", "src")


def use_triton_cache_under(cache_dir: str) -> None:
    """Point Triton's binary cache under kitsune's, unless the user already chose one."""
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(cache_dir, "triton"))


def _entry_ok(path: str, digest: str) -> bool:
    try:
        with open(path, "rb") as f:
            text = f.read()
        with open(path[: -len(".py")] + ".sha256") as f:
            recorded = f.read().strip()
    except OSError:
        return False
    return recorded == digest and hashlib.sha256(text).hexdigest() == digest


def _write_atomic(path: str, text: str) -> None:
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def load(source: str, cache_dir: str) -> types.ModuleType:
    """Import ``source`` through the cache (once per process and source).

    Returns the module; a corrupt or missing entry is (re)written first.
    """
    digest = source_hash(source)
    with _LOCK:
        module = _LOADED.get(digest)
        if module is not None:
            return module
        use_triton_cache_under(cache_dir)
        folder = source_dir(cache_dir)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{digest}.py")
        if not _entry_ok(path, digest):
            _write_atomic(path, source)
            _write_atomic(path[: -len(".py")] + ".sha256", digest + "\n")
        name = f"kitsune_kernel_{digest[:24]}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # Triton reads the kernel's source through its module
        spec.loader.exec_module(module)
        _LOADED[digest] = module
        return module
