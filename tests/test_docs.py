"""The Sphinx docs build without a warning, say what the code says, and their examples run.

Marked ``docs``: deselect with ``-m "not docs"``; they run by default.
"""

import dataclasses
import html as html_text
import pathlib
import re
import runpy
import subprocess
import sys

import pytest

from kitsune_backend import config, pipeline

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = REPO_ROOT / "docs"

pytestmark = pytest.mark.docs


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    """Build the docs once with warnings as errors; the output folder."""
    out = tmp_path_factory.mktemp("docs_html")
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(out / ".doctrees"), str(DOCS), str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def _text(path):
    """The visible text of an HTML page, with Sphinx's curly quotes made straight again."""
    text = html_text.unescape(re.sub(r"<[^>]+>", "", path.read_text()))
    return text.replace("\u2019", "'").replace("\u2018", "'")


def test_every_page_is_built(html):
    for page in ("index", "quickstart", "architecture", "pipeline", "plugins", "configuration",
                 "benchmarks", "cli", "api"):
        assert (html / f"{page}.html").exists(), page


def test_configuration_page_lists_every_option_variable_and_mode(html):
    text = _text(html / "configuration.html")
    for field in dataclasses.fields(config.Config):
        assert f"KITSUNE_{field.name.upper()}" in text, field.name
    for mode in config.MODES:
        assert repr(mode) in text, mode


def test_pipeline_page_lists_every_stage_in_order(html):
    text = " ".join(_text(html / "pipeline.html").split())
    positions = [text.find(stage.why_here) for stage in pipeline.PIPELINE]
    assert -1 not in positions and positions == sorted(positions)


def test_architecture_page_draws_every_stage_with_its_hand_offs(html):
    """The phases picture and the table come from PIPELINE: every stage, its phase, the
    function that runs it and the fields it requires and ensures, in order."""
    raw = _text(html / "architecture.html")
    text = " ".join(raw.split())
    for phase in pipeline.PHASES:
        assert f"[{phase} phase]" in text, phase
    picture = raw[raw.find("[graph phase]"):raw.find("ctx.runner: the callable")]
    first_words = [line.split()[0] for line in picture.splitlines() if line.startswith("  ")]
    assert [w for w in first_words if w != "v"] == [s.name for s in pipeline.PIPELINE]
    for stage in pipeline.PIPELINE:
        if stage.fn is not None:
            assert f"{stage.fn.__module__}.{stage.fn.__name__}" in text, stage.name
        for field in (*stage.requires, *stage.ensures):
            assert field in text, (stage.name, field)


def test_api_page_documents_the_public_names(html):
    import kitsune_backend

    text = _text(html / "api.html")
    for name in kitsune_backend.__all__:
        if name != "config":  # the module itself, documented as kitsune_backend.config
            assert re.search(rf"kitsune_backend(\.\w+)+\.{name}\b", text), name


def _quickstart_did_what_it_says(names, printed, tmp_path):
    session = names["session"]  # the training step's compile, explained
    assert [r.name for r in session.records] == ["forward", "backward"]
    assert "graph forward:" in printed and "graph backward:" in printed
    for stage in ("cleanup", "fusion", "streams", "memory_plan"):
        assert stage in printed, stage


def _plugin_pass_counted_the_matmuls(names, printed, tmp_path):
    # the MLP's 2 matmuls forward, 3 backward (the first layer's input needs no gradient)
    assert printed.splitlines()[-1] == "2 3", printed


def _inspect_graphs_showed_every_stage(names, printed, tmp_path):
    forward = names["forward"]
    for stage in ("input", "cleanup", "fusion", "streams", "memory_plan"):
        assert f"---- forward after {stage}\n" in printed, stage
    assert names["dot_text"].startswith('digraph "forward after memory_plan"')
    assert names["graph"].number_of_nodes() == len(forward.nodes_after("memory_plan"))
    svg = tmp_path / "forward.svg"  # drawn where Graphviz is installed, explained where not
    assert (svg.exists() and "<svg" in svg.read_text()) or "Graphviz" in printed


def _training_loss_fell(names, printed, tmp_path):
    losses, stats = names["losses"], names["stats"]
    assert losses[-1] < 0.8 * losses[0], losses
    assert stats["update"] == "kitsune" and stats["generated_kernels"] == 1, stats
    assert names["optimizer"].param_groups[0]["lr"] == 1e-3 * 0.5 ** 3


EXAMPLE_CHECKS = {
    "quickstart.py": _quickstart_did_what_it_says,
    "plugin_pass.py": _plugin_pass_counted_the_matmuls,
    "inspect_graphs.py": _inspect_graphs_showed_every_stage,
    "train_mnist_style.py": _training_loss_fell,
}


def test_every_example_has_a_check():
    assert sorted(p.name for p in (DOCS / "examples").glob("*.py")) == sorted(EXAMPLE_CHECKS)


@pytest.mark.parametrize("example", sorted(EXAMPLE_CHECKS))
def test_examples_run(example, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # inspect_graphs.py may write forward.svg here
    names = runpy.run_path(str(DOCS / "examples" / example), run_name="__main__")
    EXAMPLE_CHECKS[example](names, capsys.readouterr().out, tmp_path)
