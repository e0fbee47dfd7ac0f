"""Sphinx directives that build tables from kitsune's own code, so the docs cannot drift:

* ``.. kitsune-config-table::`` every :class:`kitsune_backend.config.Config` field with its
  type, default, environment variable and docstring;
* ``.. kitsune-modes-table::`` every ``torch.compile`` mode and the settings it implies;
* ``.. kitsune-pipeline-table::`` every pipeline stage, in order, with its phase and the
  reason for its position;
* ``.. kitsune-architecture-table::`` every stage with the function that runs it and the
  context fields it reads and sets;
* ``.. kitsune-phases-diagram::`` a picture of the three phases, their stages, and the data
  each stage hands on.
"""

from __future__ import annotations

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.docutils import SphinxDirective

from kitsune_backend import config, pipeline


class _TableDirective(SphinxDirective):
    """Renders the reStructuredText ``list-table`` that :meth:`rows` describes."""

    has_content = False
    header: tuple[str, ...] = ()
    widths = ""

    def rows(self) -> list[tuple[str, ...]]:
        """The table's body rows, one string of inline reStructuredText per cell."""
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        """Parse the generated table into docutils nodes."""
        lines = [".. list-table::", "   :header-rows: 1", f"   :widths: {self.widths}", ""]
        for row in [self.header, *self.rows()]:
            lines.append(f"   * - {row[0]}")
            lines.extend(f"     - {cell}" for cell in row[1:])
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source="kitsune_tables"), 0, container)
        return container.children


class ConfigTable(_TableDirective):
    """Every Config field: name, type, default, environment variable, description."""

    header = ("Option", "Type", "Default", "Environment variable", "What it does")
    widths = "14 6 8 24 48"

    def rows(self) -> list[tuple[str, ...]]:
        """One row per field, in declaration order."""
        docs = ModuleAnalyzer.for_module(config.__name__).find_attr_docs()
        found = []
        for name, field in config.FIELDS.items():
            text = " ".join(line.strip() for line in docs.get(("Config", name), [])).strip()
            found.append((
                f"``{name}``",
                type(field.default).__name__,
                f"``{field.metadata.get('default_doc', repr(field.default))}``",
                f"``{config.ENV_PREFIX}{name.upper()}``",
                text or "(no description)",
            ))
        return found


class ModesTable(_TableDirective):
    """Every mode kitsune accepts and the settings it implies."""

    header = ("mode", "Settings it implies")
    widths = "30 70"

    def rows(self) -> list[tuple[str, ...]]:
        """One row per mode, in the order ``config.MODES`` lists them."""
        return [
            (f"``{mode!r}``",
             ", ".join(f"``{k}={v!r}``" for k, v in implied.items()) or "nothing")
            for mode, implied in config.MODES.items()
        ]


class PipelineTable(_TableDirective):
    """The pipeline's stages in order, with the reason for each position."""

    header = ("#", "Stage", "Phase", "Kind", "Why it runs here")
    widths = "4 14 10 12 60"

    def rows(self) -> list[tuple[str, ...]]:
        """One row per stage of ``pipeline.PIPELINE``."""
        return [
            (str(index), f"``{stage.name}``", stage.phase,
             "built-in stage" if stage.fn is not None else "plugin slot", stage.why_here)
            for index, stage in enumerate(pipeline.PIPELINE, start=1)
        ]


def _fields(names: tuple[str, ...]) -> str:
    return ", ".join(f"``{name}``" for name in names) or "-"


class ArchitectureTable(_TableDirective):
    """Each stage's function, and the context fields it requires and ensures."""

    header = ("Stage", "Phase", "Function", "Requires", "Ensures")
    widths = "14 10 46 15 15"

    def rows(self) -> list[tuple[str, ...]]:
        """One row per stage of ``pipeline.PIPELINE``."""
        return [
            (f"``{stage.name}``", stage.phase,
             f":func:`{stage.fn.__module__}.{stage.fn.__name__}`" if stage.fn is not None
             else "plugin passes (:mod:`kitsune_backend.plugins`)",
             _fields(stage.requires), _fields(stage.ensures))
            for stage in pipeline.PIPELINE
        ]


def phases_diagram() -> str:
    """The three phases as text: each stage in order, with the fields it hands on."""
    lines = ["Dynamo FX graph", "  |  AOTAutograd: functionalized ATen forward / backward graphs",
             "  v"]
    for phase in pipeline.PHASES:
        lines.append(f"[{phase} phase]")
        for stage in (s for s in pipeline.PIPELINE if s.phase == phase):
            kind = "" if stage.fn is not None else " (plugin passes)"
            reads = f" reads {', '.join(stage.requires)};" if stage.requires else ""
            sets = f" sets {', '.join(stage.ensures)}" if stage.ensures else ""
            lines.append(f"  {stage.name:<14}{kind}{reads}{sets}".rstrip(" ;"))
        lines.append("  v")
    lines.append("ctx.runner: the callable AOTAutograd calls")
    return "\n".join(lines)


class PhasesDiagram(SphinxDirective):
    """The picture of the phases (:func:`phases_diagram`) as a literal block."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        """One literal block."""
        text = phases_diagram()
        return [nodes.literal_block(text, text)]


def setup(app):
    """Register the directives."""
    app.add_directive("kitsune-config-table", ConfigTable)
    app.add_directive("kitsune-modes-table", ModesTable)
    app.add_directive("kitsune-pipeline-table", PipelineTable)
    app.add_directive("kitsune-architecture-table", ArchitectureTable)
    app.add_directive("kitsune-phases-diagram", PhasesDiagram)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
