"""The state kitsune keeps for the whole process, in one object made once: :data:`PROCESS`.

* ``history``: the last compile sessions (:mod:`kitsune_backend.inspection` reads them);
* ``plugins``: the pass registry (:func:`register_pass`, entry points);
* ``kernel_cache``: the generated sources imported so far;
* ``compile_pool``: the compile worker processes (started on demand, closed at exit);
* ``captures``: what the captured CUDA graphs know of each other's memory;
* ``warned_dynamic``: the functions already warned that symbolic sizes kept regions of
  theirs from fusing.

The backend hands :data:`PROCESS` to every compile (``PassContext.process``); nothing below
this module keeps process state of its own.
"""

from __future__ import annotations

import atexit
import dataclasses
from typing import Optional

from .codegen.cache import KernelCache
from .codegen.compile_pool import CompilePool
from .ir import PassFn
from .plugins import PassRegistry, PluginPass
from .runtime.capture_registry import CaptureRegistry
from .session import History


@dataclasses.dataclass(eq=False)
class ProcessState:
    """Everything kitsune keeps between compiles in one process (see the module doc)."""

    history: History = dataclasses.field(default_factory=History)
    plugins: PassRegistry = dataclasses.field(default_factory=PassRegistry)
    kernel_cache: KernelCache = dataclasses.field(default_factory=KernelCache)
    compile_pool: CompilePool = dataclasses.field(default_factory=CompilePool)
    captures: CaptureRegistry = dataclasses.field(default_factory=CaptureRegistry)
    warned_dynamic: set = dataclasses.field(default_factory=set)


PROCESS = ProcessState()
atexit.register(PROCESS.compile_pool.close)


def register_pass(
    fn: PassFn,
    *,
    stage: str = "pre_fusion",
    name: Optional[str] = None,
    order: int = 0,
) -> PluginPass:
    """Register ``fn(gm, ctx) -> PassResult | None`` to run at ``stage`` in every compile.

    ``stage`` is ``"pre_fusion"`` (plain ATen with metadata) or ``"post_fusion"`` (fused
    regions are single nodes). ``name`` defaults to the function's name and must be unique.
    Lower ``order`` runs first. Returns the registration; :func:`unregister_pass` undoes it.
    Installed entry points are loaded first, so a name one of them holds is refused here.
    """
    PROCESS.plugins.load_entry_points()
    if name is None:
        name = getattr(fn, "__name__", "")
    return PROCESS.plugins.register(PluginPass(name=name, fn=fn, stage=stage, order=order))


def unregister_pass(name: str) -> None:
    """Remove a pass registered under ``name``."""
    PROCESS.plugins.unregister(name)


def clear_history() -> None:
    """Forget every recorded compile."""
    PROCESS.history.clear()
