"""Logging: KITSUNE_LOG, one INFO line per graph, DEBUG per stage, the dynamic-shapes
warning once per function, progress lines only on a terminal, silence by default."""

import io
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import kitsune_backend
from kitsune_backend import log
from kitsune_backend.errors import KitsuneConfigError


class Records(logging.Handler):
    """Keeps every record kitsune logs at or above ``level`` during a test."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def kitsune_records():
    root = logging.getLogger("kitsune_backend")
    handler, saved = Records(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler.records
    root.removeHandler(handler)
    root.setLevel(saved)


def test_parse_setting_accepts_levels_and_named_loggers():
    assert log.parse_setting("info") == {"kitsune_backend": logging.INFO}
    assert log.parse_setting("compile=info, lowering=DEBUG") == {
        "kitsune_backend.compile": logging.INFO, "kitsune_backend.lowering": logging.DEBUG}
    with pytest.raises(KitsuneConfigError, match="unknown level 'loud'.*debug, info"):
        log.parse_setting("loud")
    with pytest.raises(KitsuneConfigError, match="unknown logger 'codegen'.*compile, graph"):
        log.parse_setting("codegen=debug")


def test_info_line_per_graph_and_debug_line_per_stage(kitsune_records):
    kitsune_backend.compile(lambda x: torch.relu(x) * 2)(torch.randn(4))
    info = [r for r in kitsune_records if r.name == "kitsune_backend.compile"]
    assert len(info) == 1 and info[0].levelno == logging.INFO
    assert info[0].getMessage().startswith("graph inference:")
    stages = [r.getMessage() for r in kitsune_records if r.name == "kitsune_backend.graph"]
    assert any(m.startswith("inference fusion:") for m in stages)
    assert {r.name for r in kitsune_records} >= {"kitsune_backend.lowering",
                                                 "kitsune_backend.runtime"}


def test_symbolic_sizes_warn_once_per_function(kitsune_records):
    def f(x):  # an arange of symbolic size runs as ATen: that decline warns
        return (torch.relu(x) + torch.arange(x.shape[0])) * 2

    compiled = kitsune_backend.compile(f)
    for n in (4, 5, 6, 7):  # the second size recompiles with a symbolic size
        x = torch.randn(n)
        torch.testing.assert_close(compiled(x), f(x))
    warnings = [r for r in kitsune_records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "symbolic sizes" in message and "dynamic=False" in message
    assert "test_logging.py" in message  # where the function is


def test_progress_prints_only_on_a_terminal_after_a_while(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, expect in ((Terminal(), True), (io.StringIO(), False)):
        progress = log.Progress("forward", stream=stream)
        progress.report("early")
        progress.start -= log.PROGRESS_AFTER_S + 1
        progress.report("stage kernels done")
        progress.done()
        text = stream.getvalue()
        assert ("stage kernels done" in text and "compiled forward" in text) == expect
        assert "early" not in text


def test_a_small_compile_prints_nothing_and_kitsune_log_turns_lines_on():
    script = textwrap.dedent("""
        import torch, kitsune_backend
        print(kitsune_backend.compile(lambda x: x.sin() + 1)(torch.zeros(3)).tolist())
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KITSUNE_", "TORCH_LOGS"))}
    env["TRITON_INTERPRET"] = "1"
    quiet = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, timeout=300)
    assert quiet.returncode == 0 and quiet.stdout.strip() == "[1.0, 1.0, 1.0]"
    assert quiet.stderr == ""
    loud = subprocess.run([sys.executable, "-c", script], env={**env, "KITSUNE_LOG": "info"},
                          capture_output=True, text=True, timeout=300)
    assert "[kitsune_backend.compile] INFO graph inference:" in loud.stderr
