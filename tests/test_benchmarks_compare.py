"""``python -m benchmarks compare``: exit codes on synthetic results files."""

import copy
import json
import os
import sys

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import cli  # noqa: E402  (after the repository root is on the path)


def _row(model, backend, speedup, status="ok"):
    return {"model": model, "backend": backend, "status": status, "speedup": speedup}


def _results(speedups=None, micro=None, quick=False, device="cuda", gpu="NVIDIA H100"):
    speedups = speedups or {("branchy", "kitsune"): 3.0, ("branchy", "inductor"): 2.0,
                            ("gpt2", "kitsune"): 2.5, ("gpt2", "kitsune-no-streams"): 2.0}
    micro = micro if micro is not None else {("softmax_bf16", "kitsune"): 0.9}
    return {
        "schema": 1,
        "meta": {"quick": quick, "device": device, "gpu": gpu, "date": "2026-11-22"},
        "models": [_row(m, b, s) for (m, b), s in speedups.items()],
        "micro": {"copy_gbps": 2900.0, "rows": [
            {"case": c, "backend": b, "status": "ok", "fraction_of_copy": f}
            for (c, b), f in micro.items()]},
        "skipped": [],
    }


def _run_compare(tmp_path, new, baseline, *extra):
    paths = []
    for name, data in (("new.json", new), ("baseline.json", baseline)):
        path = tmp_path / name
        path.write_text(json.dumps(data))
        paths.append(str(path))
    return cli.main(["compare", *paths, *extra])


def test_identical_results_pass(tmp_path, capsys):
    base = _results()
    assert _run_compare(tmp_path, copy.deepcopy(base), base) == 0
    assert "no regression in 4 kitsune ratio(s)" in capsys.readouterr().out


def test_kitsune_drop_over_five_percent_fails_and_names_the_row(tmp_path, capsys):
    base = _results()
    new = copy.deepcopy(base)
    new["models"][0]["speedup"] = 3.0 * 0.90
    assert _run_compare(tmp_path, new, base) == 1
    out = capsys.readouterr().out
    regressed = [line for line in out.splitlines() if "REGRESSION" in line]
    assert len(regressed) == 1 and regressed[0].startswith("branchy/kitsune ")
    assert "dropped 10.0%" in regressed[0]


def test_small_drop_and_non_kitsune_drop_pass(tmp_path):
    base = _results()
    new = copy.deepcopy(base)
    new["models"][0]["speedup"] = 3.0 * 0.96  # kitsune: -4%
    new["models"][1]["speedup"] = 1.0  # inductor halves: not kitsune's regression
    assert _run_compare(tmp_path, new, base) == 0


def test_ablation_rows_and_micro_fractions_are_watched(tmp_path, capsys):
    base = _results()
    new = copy.deepcopy(base)
    new["models"][3]["speedup"] = 1.0
    new["micro"]["rows"][0]["fraction_of_copy"] = 0.5
    assert _run_compare(tmp_path, new, base) == 1
    out = capsys.readouterr().out
    assert "gpt2/kitsune-no-streams" in out and "micro:softmax_bf16/kitsune" in out


@pytest.mark.parametrize("status", ["mismatch", "error", "missing"])
def test_a_failing_or_missing_row_is_a_regression(tmp_path, capsys, status):
    base = _results()
    new = copy.deepcopy(base)
    if status == "missing":
        del new["models"][2]
    else:
        new["models"][2]["status"] = status
    assert _run_compare(tmp_path, new, base) == 1
    assert "gpt2/kitsune " in capsys.readouterr().out


@pytest.mark.parametrize("which", ["new", "baseline"])
def test_smoke_runs_cannot_be_compared(tmp_path, capsys, which):
    base, new = _results(), _results()
    (new if which == "new" else base)["meta"].update(quick=True, device="cpu")
    assert _run_compare(tmp_path, new, base) == 2
    assert "smoke run" in capsys.readouterr().err


def test_not_a_results_file_exits_2(tmp_path):
    assert _run_compare(tmp_path, {"hello": 1}, _results()) == 2


def test_different_gpus_warn_but_still_compare(tmp_path, capsys):
    assert _run_compare(tmp_path, _results(gpu="NVIDIA H200"), _results()) == 0
    assert "different GPUs" in capsys.readouterr().out


def test_threshold_option(tmp_path):
    base = _results()
    new = copy.deepcopy(base)
    new["models"][0]["speedup"] = 3.0 * 0.92
    assert _run_compare(tmp_path, new, base) == 1
    assert _run_compare(tmp_path, new, base, "--threshold", "0.10") == 0


@settings(max_examples=25, deadline=None)
@given(baseline=st.floats(0.2, 20.0), factor=st.floats(0.5, 1.5))
def test_exit_code_is_one_exactly_when_the_ratio_drops_over_five_percent(
        tmp_path_factory, baseline, factor):
    assume(abs(factor - 0.95) > 1e-6)
    tmp_path = tmp_path_factory.mktemp("cmp")
    base = _results(speedups={("branchy", "kitsune"): baseline}, micro={})
    new = _results(speedups={("branchy", "kitsune"): baseline * factor}, micro={})
    expected = 1 if factor < 0.95 else 0
    assert _run_compare(tmp_path, new, base) == expected


def test_merge_joins_runs_of_different_models(tmp_path, capsys):
    first = _results(speedups={("branchy", "kitsune"): 3.0},
                     micro={("softmax_bf16", "kitsune"): 0.9})
    second = _results(speedups={("gpt2", "kitsune"): 2.0}, micro={})
    second["skipped"] = [{"what": "googlenet", "reason": "needs torchvision"}]
    paths = []
    for name, data in (("a.json", first), ("b.json", second)):
        (tmp_path / name).write_text(json.dumps(data))
        paths.append(str(tmp_path / name))
    out = tmp_path / "merged.json"
    assert cli.main(["merge", *paths, "--out", str(out)]) == 0
    merged = json.loads(out.read_text())
    assert {(r["model"], r["backend"]) for r in merged["models"]} == {
        ("branchy", "kitsune"), ("gpt2", "kitsune")}
    assert merged["micro"]["copy_gbps"] == 2900.0 and len(merged["micro"]["rows"]) == 1
    assert [s["what"] for s in merged["skipped"]] == ["googlenet"]
    assert cli.main(["merge", paths[0], paths[0], "--out", str(out)]) == 2
    (tmp_path / "c.json").write_text(json.dumps(_results(gpu="other")))
    assert cli.main(["merge", paths[0], str(tmp_path / "c.json"), "--out", str(out)]) == 2
    assert "different devices" in capsys.readouterr().err
