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


def _rows(model, kitsune_ms, ro_ms=1.0, status="ok", backend="kitsune"):
    """A kitsune row and its reduce-overhead row: the ratio is ro_ms / kitsune_ms."""
    return [{"model": model, "backend": "inductor-ro", "status": "ok", "median_ms": ro_ms,
             "speedup": 1.0},
            {"model": model, "backend": backend, "status": status, "median_ms": kitsune_ms,
             "speedup": 2.0}]


def _results(ratios=None, micro=None, quick=False, device="cuda", gpu="NVIDIA H100"):
    """A results file whose kitsune rows run at ``ratios`` x reduce-overhead's speed."""
    ratios = ratios or {("branchy", "kitsune"): 3.0, ("gpt2", "kitsune"): 2.5,
                        ("gpt2", "kitsune-no-streams"): 2.0}
    micro = micro if micro is not None else {("softmax_bf16", "kitsune"): 0.9}
    models = []
    for (model, backend), ratio in ratios.items():
        rows = _rows(model, 1.0 / ratio, backend=backend)
        models += [r for r in rows if r not in models]
    return {
        "schema": 1,
        "meta": {"quick": quick, "device": device, "gpu": gpu, "date": "2026-11-22"},
        "models": models,
        "micro": {"copy_gbps": 2900.0, "rows": [
            {"case": c, "backend": b, "status": "ok", "fraction_of_copy": f}
            for (c, b), f in micro.items()]},
        "skipped": [],
    }


def _set_ratio(results, model, backend, ratio):
    for row in results["models"]:
        if row["model"] == model and row["backend"] == backend:
            row["median_ms"] = 1.0 / ratio


def _run_compare(tmp_path, new, baseline, *extra, runs=3):
    """``compare`` on ``runs`` copies of each side (``new``/``baseline`` may be lists)."""
    new = new if isinstance(new, list) else [copy.deepcopy(new) for _ in range(runs)]
    baseline = baseline if isinstance(baseline, list) else [
        copy.deepcopy(baseline) for _ in range(runs)]
    paths = {"new": [], "baseline": []}
    for side, files in (("new", new), ("baseline", baseline)):
        for i, data in enumerate(files):
            path = tmp_path / f"{side}{i}.json"
            path.write_text(json.dumps(data))
            paths[side].append(str(path))
    return cli.main(["compare", *paths["new"], "--baseline", *paths["baseline"], *extra])


def test_identical_results_pass(tmp_path, capsys):
    base = _results()
    assert _run_compare(tmp_path, copy.deepcopy(base), base) == 0
    assert "no regression in 4 kitsune ratio(s)" in capsys.readouterr().out


def test_a_six_percent_drop_over_reduce_overhead_fails_and_four_passes(tmp_path, capsys):
    base = _results()
    new = copy.deepcopy(base)
    _set_ratio(new, "branchy", "kitsune", 3.0 * 0.94)
    assert _run_compare(tmp_path, new, base) == 1
    regressed = [line for line in capsys.readouterr().out.splitlines() if "REGRESSION" in line]
    assert len(regressed) == 1 and regressed[0].startswith("branchy/kitsune ")
    assert "dropped 6.0%" in regressed[0]
    _set_ratio(new, "branchy", "kitsune", 3.0 * 0.96)
    assert _run_compare(tmp_path, new, base) == 0


def test_the_ratio_is_over_reduce_overhead_not_eager(tmp_path):
    """Eager getting faster in the new runs (kitsune's speedup over eager drops) is not a
    regression; reduce-overhead getting faster at the same kitsune time is."""
    base = _results()
    new = copy.deepcopy(base)
    for row in new["models"]:
        row["speedup"] = 0.5
    assert _run_compare(tmp_path, new, base) == 0
    for row in new["models"]:
        if row["backend"] == "inductor-ro" and row["model"] == "gpt2":
            row["median_ms"] = 0.9
    assert _run_compare(tmp_path, new, base) == 1


def test_the_median_of_the_runs_is_compared(tmp_path):
    """One slow run among three moves nothing; two do."""
    base = _results()
    slow = copy.deepcopy(base)
    _set_ratio(slow, "branchy", "kitsune", 3.0 * 0.8)
    assert _run_compare(tmp_path, [slow, copy.deepcopy(base), copy.deepcopy(base)], base) == 0
    assert _run_compare(tmp_path, [slow, copy.deepcopy(slow), copy.deepcopy(base)], base) == 1


def test_fewer_runs_than_the_minimum_cannot_be_compared(tmp_path, capsys):
    base = _results()
    assert _run_compare(tmp_path, base, base, runs=2) == 2
    assert "at least 3" in capsys.readouterr().err
    assert _run_compare(tmp_path, base, base, "--min-runs", "2", runs=2) == 0


def test_ablation_rows_and_micro_fractions_are_watched(tmp_path, capsys):
    base = _results()
    new = copy.deepcopy(base)
    _set_ratio(new, "gpt2", "kitsune-no-streams", 1.0)
    new["micro"]["rows"][0]["fraction_of_copy"] = 0.5
    assert _run_compare(tmp_path, new, base) == 1
    out = capsys.readouterr().out
    assert "gpt2/kitsune-no-streams" in out and "micro:softmax_bf16/kitsune" in out


@pytest.mark.parametrize("status", ["mismatch", "error", "mistimed", "missing"])
def test_a_failing_or_missing_row_is_a_regression(tmp_path, capsys, status):
    base = _results()
    new = copy.deepcopy(base)
    rows = new["models"]
    index = next(i for i, r in enumerate(rows) if (r["model"], r["backend"]) == ("gpt2", "kitsune"))
    if status == "missing":
        del rows[index]
    else:
        rows[index]["status"] = status
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
    _set_ratio(new, "branchy", "kitsune", 3.0 * 0.92)
    assert _run_compare(tmp_path, new, base) == 1
    assert _run_compare(tmp_path, new, base, "--threshold", "0.10") == 0


@settings(max_examples=25, deadline=None)
@given(baseline=st.floats(0.2, 20.0), factor=st.floats(0.5, 1.5))
def test_exit_code_is_one_exactly_when_the_ratio_drops_over_five_percent(
        tmp_path_factory, baseline, factor):
    assume(abs(factor - 0.95) > 1e-6)
    tmp_path = tmp_path_factory.mktemp("cmp")
    base = _results(ratios={("branchy", "kitsune"): baseline}, micro={})
    new = _results(ratios={("branchy", "kitsune"): baseline * factor}, micro={})
    expected = 1 if factor < 0.95 else 0
    assert _run_compare(tmp_path, new, base) == expected


def test_merge_joins_runs_of_different_models(tmp_path, capsys):
    first = _results(ratios={("branchy", "kitsune"): 3.0},
                     micro={("softmax_bf16", "kitsune"): 0.9})
    second = _results(ratios={("gpt2", "kitsune"): 2.0}, micro={})
    second["skipped"] = [{"what": "googlenet", "reason": "needs torchvision"}]
    paths = []
    for name, data in (("a.json", first), ("b.json", second)):
        (tmp_path / name).write_text(json.dumps(data))
        paths.append(str(tmp_path / name))
    out = tmp_path / "merged.json"
    assert cli.main(["merge", *paths, "--out", str(out)]) == 0
    merged = json.loads(out.read_text())
    assert {(r["model"], r["backend"]) for r in merged["models"]} == {
        ("branchy", "kitsune"), ("gpt2", "kitsune"), ("branchy", "inductor-ro"),
        ("gpt2", "inductor-ro")}
    assert merged["micro"]["copy_gbps"] == 2900.0 and len(merged["micro"]["rows"]) == 1
    assert [s["what"] for s in merged["skipped"]] == ["googlenet"]
    assert cli.main(["merge", paths[0], paths[0], "--out", str(out)]) == 2
    (tmp_path / "c.json").write_text(json.dumps(_results(gpu="other")))
    assert cli.main(["merge", paths[0], str(tmp_path / "c.json"), "--out", str(out)]) == 2
    assert "different devices" in capsys.readouterr().err


def test_the_summary_gives_the_geomean_over_reduce_overhead_and_the_slower_models():
    from benchmarks import report

    rows = _results(ratios={("a", "kitsune"): 2.0, ("b", "kitsune"): 0.5,
                            ("c", "kitsune"): 0.96, ("c", "kitsune-no-streams"): 0.1})["models"]
    for row in rows:
        row["vs_reduce_overhead"] = 1.0 / row["median_ms"] if row["backend"] != "inductor-ro" \
            else 1.0
    found = report.versus_reduce_overhead(rows)
    assert found["models"] == 3 and found["slower"] == {"b": 0.5}
    assert found["geomean"] == pytest.approx((2.0 * 0.5 * 0.96) ** (1 / 3))
    assert "more than 5% slower: b 0.50x" in report.format_versus(rows)
