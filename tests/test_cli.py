"""The command line (``python -m kitsune_backend`` / ``kitsune``): doctor, explain, cache,
bench. Most tests call :func:`kitsune_backend.cli.main` in this process; one runs the real
``python -m kitsune_backend doctor`` without ``TRITON_INTERPRET`` set."""

from __future__ import annotations

import configparser
import importlib
import importlib.metadata
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch

from kitsune_backend import cli, config, doctor
from kitsune_backend.codegen import cache
from kitsune_backend.plugins import ENTRY_POINT_GROUP, PassRegistry

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
CHECKS = ["torch", "triton", "cuda", "config", "kernel cache", "kernel", "entry point",
          "plugins"]


def _script(tmp_path, body: str) -> str:
    path = tmp_path / "user_script.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


# ---- doctor


def test_doctor_passes_on_this_machine(tmp_path):
    """The real command, in a fresh process that has no TRITON_INTERPRET: the kernel check
    still compiles and runs a generated kernel (in its own child on a machine without CUDA)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-m", "kitsune_backend", "doctor", "--cache-dir", str(tmp_path)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for name in CHECKS:
        assert any(line.startswith(f"ok    {name}: ") for line in lines), (name, done.stdout)
    assert "FAIL" not in done.stdout
    assert "kitsune_fused_sin_add_relu" in done.stdout
    assert cache.cached_sources(str(tmp_path)), "the probe's kernel was not cached there"
    assert f"all {len(CHECKS)} checks passed" in done.stdout


def test_doctor_fails_on_a_cache_dir_that_cannot_be_written(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    bad = blocker / "cache"  # under a regular file: can never be created
    assert cli.main(["doctor", "--cache-dir", str(bad)]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    failed = [line for line in lines if line.startswith("FAIL")]
    assert failed[0].startswith(f"FAIL  kernel cache: {bad} is not writable")
    fix = lines[lines.index(failed[0]) + 1]
    assert fix.strip().startswith("fix:") and "--cache-dir" in fix
    assert "FAIL  kernel: not tried: kernel cache failed" in out
    assert "2 of 8 checks failed: kernel cache, kernel" in out


def test_version_checks_fail_below_the_minimum(monkeypatch):
    assert doctor.version_tuple("2.13.0+cpu") == (2, 13, 0)
    assert doctor.check_torch().ok
    monkeypatch.setattr(torch, "__version__", "2.10.1")
    result = doctor.check_torch()
    assert not result.ok and "2.10.1 (needs >= 2.11)" in result.detail
    assert result.lines() == ["FAIL  torch: 2.10.1 (needs >= 2.11)",
                              "      fix: pip install 'torch>=2.11'"]


def test_the_torch_check_names_the_meta_kernels_kitsune_added(monkeypatch):
    from kitsune_backend import torch_compat

    assert "Meta kernels" not in doctor.check_torch().detail  # torch 2.13 lacks none
    monkeypatch.setattr(torch_compat, "REGISTERED", ["_transformer_encoder_layer_fwd"])
    result = doctor.check_torch()
    assert result.ok and result.detail.endswith(
        "Meta kernels this torch lacks, added by kitsune: aten._transformer_encoder_layer_fwd")


def test_a_bad_environment_variable_fails_the_config_check(monkeypatch, tmp_path):
    monkeypatch.setenv("KITSUNE_FUSOIN", "0")
    result = doctor.check_config()
    assert not result.ok and "KITSUNE_FUSOIN" in result.detail and "KITSUNE_FUSION" in result.detail
    by_name = {r.name: r for r in doctor.run_checks(str(tmp_path))}
    assert list(by_name) == CHECKS
    assert not by_name["kernel"].ok and "not tried: config failed" in by_name["kernel"].detail


def test_plugin_check_names_a_plugin_that_does_not_load(monkeypatch):
    points = [importlib.metadata.EntryPoint("good_pass", "os.path:join", ENTRY_POINT_GROUP),
              importlib.metadata.EntryPoint("bad_pass", "kitsune_no_such_module:fn",
                                            ENTRY_POINT_GROUP)]
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: points if group == ENTRY_POINT_GROUP else [])
    result = doctor.check_plugins(PassRegistry())
    assert not result.ok
    assert "1 of 2 failed to load" in result.detail and "bad_pass" in result.detail
    assert "ModuleNotFoundError" in result.detail and "uninstall" in result.fix
    points.pop()
    assert doctor.check_plugins(PassRegistry()) == doctor.CheckResult(
        "plugins", True, "1 loaded: good_pass")


def test_kernel_probe_runs_a_kernel_and_says_when_none_was_generated(tmp_path):
    """In this process (TRITON_INTERPRET is set by conftest): the probe passes, and with
    fusion off (no generated kernel) it fails and says why."""
    result = doctor.probe_kernel("cpu", str(tmp_path))
    assert result.ok, result
    assert "kitsune_fused_sin_add_relu" in result.detail and "matches eager" in result.detail
    with config.patch(fusion=False):
        result = doctor.probe_kernel("cpu", str(tmp_path))
    assert not result.ok and "no kernel was generated" in result.detail, result


# ---- explain

COMPILING_SCRIPT = """
    import sys
    import torch

    print("script argv", sys.argv[1:])
    f = torch.compile(lambda x: (x * 2).exp() + 1, backend="kitsune")
    g = torch.compile(lambda x: x.cos().sum(), backend="kitsune")
    x = torch.randn(16)
    torch.testing.assert_close(f(x), (x * 2).exp() + 1)
    g(x)
    if "--fail" in sys.argv:
        raise RuntimeError("the script failed on purpose")
"""


def test_explain_runs_the_script_and_explains_every_compile(tmp_path, capsys):
    script = _script(tmp_path, COMPILING_SCRIPT)
    dump = tmp_path / "dump"
    assert cli.main(["explain", "--debug-dir", str(dump), script, "one", "--two"]) == 0
    out = capsys.readouterr().out
    assert "script argv ['one', '--two']" in out
    assert "==== kitsune compiled 2 time(s), 2 graph(s) ====" in out
    assert out.count("kitsune compile #") == 2
    assert out.count("graph inference:") == 2 and "fusion" in out
    assert len(list(dump.iterdir())) == 2 and f"debug dump: {dump} (2 folder(s))" in out


def test_explain_schedule_needs_the_debug_dir_and_writes_into_it(tmp_path, capsys):
    script = _script(tmp_path, COMPILING_SCRIPT.replace("g(x)", "for _ in range(3): f(x)"))
    assert cli.main(["explain", "--schedule", script]) == 2
    assert "give --debug-dir too" in capsys.readouterr().err
    dump = tmp_path / "dump"
    assert cli.main(["explain", "--debug-dir", str(dump), "--schedule", script]) == 0
    assert [(p / "schedule_measured.txt").exists() for p in dump.iterdir()] == [True]


def test_explain_of_a_failing_script_exits_1_and_still_explains(tmp_path, capsys):
    script = _script(tmp_path, COMPILING_SCRIPT)
    assert cli.main(["explain", script, "--fail"]) == 1
    captured = capsys.readouterr()
    assert "RuntimeError: the script failed on purpose" in captured.err
    assert 'user_script.py", line' in captured.err
    assert "runpy" not in captured.err and "cli.py" not in captured.err
    assert "kitsune compiled 2 time(s)" in captured.out
    assert captured.out.count("graph inference:") == 2


def test_explain_says_when_compiles_fell_out_of_the_history(tmp_path, capsys, monkeypatch):
    from kitsune_backend.process import PROCESS
    from kitsune_backend.session import History

    monkeypatch.setattr(PROCESS, "history", History(limit=1))
    assert cli.main(["explain", _script(tmp_path, COMPILING_SCRIPT)]) == 0
    out = capsys.readouterr().out
    assert "kitsune compiled 2 time(s), 1 graph(s)" in out
    assert "the first 1 compile(s) are no longer in the history" in out
    assert out.count("kitsune compile #") == 1


def test_explain_says_when_nothing_compiled_and_passes_exit_codes_on(tmp_path, capsys):
    script = _script(tmp_path, 'print("no compile here")\n')
    assert cli.main(["explain", script]) == 0
    assert "kitsune compiled nothing" in capsys.readouterr().out
    script = _script(tmp_path, "raise SystemExit(3)\n")
    assert cli.main(["explain", script]) == 1
    assert "exited with code 3" in capsys.readouterr().err
    assert cli.main(["explain", str(tmp_path / "missing.py")]) == 2


# ---- cache


def _fake_cache(root: pathlib.Path) -> int:
    """Two cached sources and a Triton binary in the real layout, plus a stranger; returns
    the bytes kitsune wrote."""
    src = pathlib.Path(cache.source_dir(str(root)))
    src.mkdir(parents=True)
    for name in ("a" * 64, "b" * 64):
        (src / f"{name}.py").write_text("# a kernel\n" * 10)
        (src / f"{name}.sha256").write_text(name + "\n")
    (root / "triton").mkdir()
    (root / "triton" / "kernel.cubin").write_bytes(b"\0" * 1000)
    (root / "notes.txt").write_text("mine")
    return 2 * (110 + 65) + 1000


def test_cache_info_and_clear(tmp_path, capsys):
    written = _fake_cache(tmp_path)
    assert cli.main(["cache", "info", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"kernel cache: {tmp_path}" in out and "generated kernels: 2" in out
    assert f"size on disk: {(written + 4) / 1024:.1f} KiB" in out

    assert cli.main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"removed 2 folder(s) from {tmp_path}" in out
    assert str(tmp_path / "triton") in out and "left alone (not written by kitsune): notes.txt" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]

    assert cli.main(["cache", "info", "--cache-dir", str(tmp_path)]) == 0
    assert "generated kernels: 0" in capsys.readouterr().out
    assert cli.main(["cache", "info", "--cache-dir", str(tmp_path / "none")]) == 0
    assert "does not exist yet" in capsys.readouterr().out


# ---- bench


def test_bench_help_lists_the_models(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name in ("mlp", "branchy", "resnet18", "gpt2"):
        assert f"\n  {name} " in out, name


def test_bench_refuses_an_unknown_model_and_lists_the_known(capsys):
    assert cli.main(["bench", "no_such_model"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'no_such_model'" in err and "mlp, lenet5, resnet18" in err


def test_bench_without_the_harness_says_to_use_a_clone(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "benchmarks", None)  # makes the import fail
    assert cli.main(["bench", "mlp"]) == 1
    assert "clone of the repository" in capsys.readouterr().err


def test_bench_runs_the_harness_for_one_model(capsys):
    """A CPU smoke run of the harness (two calls): its table, one row per backend."""
    code = cli.main(["bench", "mlp", "--backends", "kitsune", "--device", "cpu", "--quick"])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = [line.split() for line in out.splitlines() if line.startswith("mlp ")]
    assert [(r[1], r[2]) for r in rows] == [("eager", "ref"), ("kitsune", "ok")]


# ---- packaging


def test_main_module_and_console_script(capsys):
    module = importlib.import_module("kitsune_backend.__main__")  # guarded: runs nothing
    assert module.main is cli.main and capsys.readouterr().out == ""
    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    scripts = setup["options.entry_points"]["console_scripts"].split()
    assert scripts == ["kitsune", "=", "kitsune_backend.cli:main"]
