"""The pass registry: passes users add, from a script or through Python entry points.

Two ways in, one registry per process (in :class:`~kitsune_backend.process.ProcessState`):

* ``kitsune_backend.register_pass(fn, stage="pre_fusion", name=..., order=...)`` from code
  (:func:`kitsune_backend.process.register_pass`);
* an installed package that declares, in its packaging metadata::

      [options.entry_points]
      kitsune_backend.passes =
          my_pass = my_package.passes:my_pass

  The object named may be a pass function (stage ``pre_fusion``, order 0, unless it carries
  ``kitsune_stage`` / ``kitsune_order`` attributes) or a :class:`PluginPass`.

Passes in a stage run by ``order``, then by name. Names are unique across both ways in: a
duplicate is refused with :class:`~kitsune_backend.errors.KitsunePluginError` (from
:func:`~kitsune_backend.process.register_pass` at once; an entry point whose name is taken is reported as broken).
Entry points are imported once per process, at the first compile or registration. One that
fails to load is remembered with its error and reported by every compile (a decline, or an
exception under ``strict=True``).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata

from .errors import KitsunePluginError
from .ir import PassFn

ENTRY_POINT_GROUP = "kitsune_backend.passes"
STAGES = ("pre_fusion", "post_fusion")


@dataclasses.dataclass(frozen=True)
class PluginPass:
    """A user pass: its unique name, the stage it runs at, its order within the stage."""

    name: str
    fn: PassFn
    stage: str = "pre_fusion"
    order: int = 0
    source: str = "register_pass"


@dataclasses.dataclass(frozen=True)
class BrokenPlugin:
    """An entry point that could not be loaded, kept so every compile can report it."""

    name: str
    error: str


class PassRegistry:
    """Registered plugin passes by name, plus the entry points that failed to load."""

    def __init__(self) -> None:
        self._passes: dict[str, PluginPass] = {}
        self._broken: dict[str, BrokenPlugin] = {}
        self._entry_points_loaded = False

    def register(self, plugin: PluginPass) -> PluginPass:
        """Add ``plugin``; refuse a bad name, stage or order, or a name already taken."""
        if not isinstance(plugin.name, str) or not plugin.name:
            raise KitsunePluginError(f"a pass name must be a non-empty string, got {plugin.name!r}")
        if not isinstance(plugin.order, int) or isinstance(plugin.order, bool):
            raise KitsunePluginError(
                f"pass {plugin.name!r}: order must be an int, got {plugin.order!r}"
            )
        if plugin.stage not in STAGES:
            raise KitsunePluginError(
                f"pass {plugin.name!r}: unknown stage {plugin.stage!r}; stages are {STAGES}"
            )
        if not callable(plugin.fn):
            raise KitsunePluginError(f"pass {plugin.name!r}: {plugin.fn!r} is not callable")
        if plugin.name in self._passes:
            raise KitsunePluginError(
                f"a pass named {plugin.name!r} is already registered "
                f"(from {self._passes[plugin.name].source}); pass names must be unique"
            )
        self._passes[plugin.name] = plugin
        return plugin

    def unregister(self, name: str) -> None:
        """Remove the pass called ``name`` (a ``KeyError`` if there is none)."""
        if name not in self._passes:
            raise KeyError(f"no pass named {name!r} is registered; passes: {sorted(self._passes)}")
        del self._passes[name]

    def load_entry_points(self) -> None:
        """Import every ``kitsune_backend.passes`` entry point once; remember failures."""
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                self.register(_plugin_from_entry_point(ep.name, ep.load(), ep.value))
            except Exception as exc:  # a broken plugin must not break compilation
                self._broken[ep.name] = BrokenPlugin(ep.name, f"{type(exc).__name__}: {exc}")

    def passes_for(self, stage: str) -> list[PluginPass]:
        """The passes of ``stage`` in the order they run."""
        self.load_entry_points()
        found = [p for p in self._passes.values() if p.stage == stage]
        return sorted(found, key=lambda p: (p.order, p.name))

    def broken(self) -> list[BrokenPlugin]:
        """Entry points that failed to load, with their errors."""
        self.load_entry_points()
        return list(self._broken.values())

    def names(self) -> list[str]:
        """Names of all registered passes."""
        self.load_entry_points()
        return sorted(self._passes)


def _plugin_from_entry_point(name: str, obj: object, value: str) -> PluginPass:
    if isinstance(obj, PluginPass):
        return dataclasses.replace(obj, source=f"entry point {value}")
    return PluginPass(
        name=name,
        fn=obj,  # type: ignore[arg-type]
        stage=getattr(obj, "kitsune_stage", "pre_fusion"),
        order=getattr(obj, "kitsune_order", 0),
        source=f"entry point {value}",
    )
