"""Sphinx directives that build tables from kitsune's own code, so the docs cannot drift:

* ``.. kitsune-config-table::`` every :class:`kitsune_backend.config.Config` field with its
  type, default, environment variable and docstring;
* ``.. kitsune-modes-table::`` every ``torch.compile`` mode and the settings it implies;
* ``.. kitsune-pipeline-table::`` every pipeline stage, in order, with the reason for its
  position.
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

    header = ("#", "Stage", "Kind", "Why it runs here")
    widths = "4 16 16 64"

    def rows(self) -> list[tuple[str, ...]]:
        """One row per stage of ``pipeline.PIPELINE``."""
        return [
            (str(index), f"``{stage.name}``",
             "built-in pass" if stage.fn is not None else "plugin slot", stage.why_here)
            for index, stage in enumerate(pipeline.PIPELINE, start=1)
        ]


def setup(app):
    """Register the directives."""
    app.add_directive("kitsune-config-table", ConfigTable)
    app.add_directive("kitsune-modes-table", ModesTable)
    app.add_directive("kitsune-pipeline-table", PipelineTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
