"""``python -m benchmarks compile-time``: the table and JSON from both phases, and a CPU smoke
run of the whole command (two child processes, Triton's interpreter, no Inductor)."""

from __future__ import annotations

import json

from benchmarks import cli
from benchmarks.compile_time import format_table, summarize

COLD = {"ok": True, "workers": 4, "kitsune_s": 5.0, "inductor_s": 20.0,
        "graphs": [{"graph": "forward", "compile_seconds": 2.0, "kernels": 30,
                    "kernels_precompiled": 30, "precompile_seconds": 1.2, "fallback": ""}]}
WARM = {"ok": True, "workers": 4, "kitsune_s": 2.5,
        "graphs": [{"graph": "forward", "compile_seconds": 0.6, "kernels": 30,
                    "kernels_precompiled": 0, "precompile_seconds": 0.0, "fallback": ""},
                   {"graph": "backward", "compile_seconds": 1.4, "kernels": 40,
                    "kernels_precompiled": 0, "precompile_seconds": 0.0, "fallback": ""}]}


def test_summary_checks_both_targets():
    results = summarize("resnet18", "cuda", None, COLD, WARM)
    assert results["cold_ratio"] == 0.25 and results["warm_worst_graph_s"] == 1.4
    assert results["meets_targets"] == {"cold_ratio": True, "warm_per_graph": False}
    table = format_table(results)
    assert "ratio kitsune / inductor" in table and "0.25" in table
    assert "forward 0.60 s, backward 1.40 s" in table and "MISSED" in table
    assert "30/30 kernels precompiled" in table


def test_failed_phase_is_shown_not_hidden():
    results = summarize("resnet18", "cuda", 2, {"ok": False, "error": "exit code 1: boom"},
                        {"ok": False, "error": "not run"})
    assert results["cold_ratio"] is None and results["meets_targets"]["cold_ratio"] is None
    assert "cold run failed: exit code 1: boom" in format_table(results)


def test_quick_cpu_smoke_run(tmp_path, capsys):
    out = tmp_path / "compile_time.json"
    code = cli.main(["compile-time", "--quick", "--device", "cpu", "--workers", "2",
                     "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    results = json.loads(out.read_text())
    assert results["model"] == "mlp" and results["workers"] == 2
    assert "inductor_s" not in results["cold"] and results["cold"]["kitsune_s"] > 0
    assert [g["graph"] for g in results["warm"]["graphs"]] == ["forward", "backward"]
    assert "warm compile per graph" in printed
