"""The command line: ``run`` measures, ``compare`` checks for regressions, ``merge`` joins
runs of different models, ``charts`` draws, ``compile-time`` times first-step compiles,
``serving`` runs a loop of changing batch sizes, ``timeline`` draws a trace's measured
per-stream schedule.

Heavy imports (torch, the harness) happen inside the commands, after ``--device cpu`` has
set ``TRITON_INTERPRET=1`` (generated Triton kernels then run on CPU tensors).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Optional

QUICK = {"iters": 2, "warmup": 1}
FULL = {"iters": 100, "warmup": 10}


def _add_run_parser(sub: Any) -> None:
    """The ``run`` subcommand's arguments."""
    run = sub.add_parser("run", help="measure models and micro-benchmarks under every backend")
    run.add_argument("--device", choices=("cuda", "cpu"), default=None,
                     help="default: cuda when available, else cpu")
    run.add_argument("--quick", action="store_true",
                     help="smoke mode: a couple of iterations, skips slow models; "
                          "not a speed measurement")
    run.add_argument("--models", default="core",
                     help="comma list of model names or groups: 'core' (the default: mlp, "
                          "lenet5, resnet18, branchy, googlenet, gpt2), 'broad' (the "
                          "torchvision/timm/HuggingFace suite, benchmarks/zoo.py), 'all', "
                          "or 'none'")
    run.add_argument("--backends", default="all",
                     help="comma list of backends, or 'all' (eager always runs: the reference)")
    run.add_argument("--micro", default="all",
                     help="comma list of micro-benchmarks (names or prefixes: pointwise10, "
                          "softmax, layer_norm_bf16, ...), 'all' or 'none'")
    run.add_argument("--iters", type=int, help="timed calls per row (default 100; quick 2)")
    run.add_argument("--warmup", type=int, help="untimed calls first (default 10; quick 1)")
    run.add_argument("--json", dest="json_path", help="write the results JSON here")
    run.add_argument("--charts", help="draw the charts PNG here (needs matplotlib)")
    run.add_argument("--trace",
                     help="write a Chrome trace of one kitsune iteration of the branchy model")
    run.add_argument("--tf32", action="store_true",
                     help="allow TF32 in convolutions and matmuls (default: off, so that "
                          "the correctness checks compare fp32 with fp32; see README)")
    run.add_argument("--kernel-counts", choices=("yes", "no", "only"), default="yes",
                     help="count each row's kernels under the profiler: 'yes' (after its "
                          "timing), 'no', or 'only' (no timing). With CUDA graphs the profiler "
                          "leaves CUPTI attached, which slows every later call's host side, "
                          "so on a GPU time with 'no' and count in a second process with "
                          "'only', then join them with `merge --counts`")
    run.add_argument("--cross-check", default="first",
                     help="models whose rows are timed a second time by the host's clock "
                          "(perf_counter around each call and a synchronize); a row more "
                          "than 10%% off its CUDA-event time is 'mistimed', a failure. Comma "
                          "list, 'all', 'none', or 'first' (the default: the first two "
                          "models run)")
    run.add_argument("--budget-s", type=float, default=None,
                     help="skip the rows that would start after this many seconds")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    _add_run_parser(sub)

    compare = sub.add_parser(
        "compare", help="fail if a kitsune ratio over reduce-overhead (median of runs) "
                        "dropped > 5%%")
    compare.add_argument("new", nargs="+", help="the new results JSON files (one per run)")
    compare.add_argument("--baseline", nargs="+", required=True,
                         help="the committed baseline results JSON files (one per run)")
    compare.add_argument("--threshold", type=float, default=0.05,
                         help="largest allowed relative drop of a ratio (default 0.05)")
    compare.add_argument("--min-runs", type=int, default=3,
                         help="fewest runs on each side (default 3): ratios are medians")

    merge = sub.add_parser("merge", help="join results files of runs of different models")
    merge.add_argument("parts", nargs="+", help="results JSON files")
    merge.add_argument("--out", required=True, help="the merged results JSON to write")
    merge.add_argument("--counts",
                       help="a results JSON from `run --kernel-counts only`: its kernel "
                            "counts fill the matching rows of the merged results")

    charts = sub.add_parser("charts", help="draw the charts PNG from a results JSON")
    charts.add_argument("results", help="a results JSON")
    charts.add_argument("--out", required=True, help="the PNG to write")

    from .compile_time import add_parser as add_compile_time
    from .serving import add_parser as add_serving
    from .timeline import add_parser as add_timeline

    add_compile_time(sub)
    add_serving(sub)
    add_timeline(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Run one subcommand; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return cmd_run(args)
    if args.command == "compare":
        return cmd_compare(args)
    if args.command == "merge":
        return cmd_merge(args)
    if args.command == "compile-time":
        from .compile_time import cmd_compile_time

        return cmd_compile_time(args)
    if args.command == "serving":
        from .serving import cmd_serving

        return cmd_serving(args)
    if args.command == "timeline":
        from .timeline import cmd_timeline

        return cmd_timeline(args)
    return cmd_charts(args)


def _names(spec: str, known: dict, what: str) -> list:
    if spec.strip() == "all":
        return list(known.values())
    if spec.strip() in ("", "none"):
        return []
    chosen = []
    for name in (n.strip() for n in spec.split(",") if n.strip()):
        if name not in known:
            raise SystemExit(f"unknown {what} {name!r}; known: {', '.join(known)}")
        chosen.append(known[name])
    return chosen


def _models(spec: str) -> tuple[list, bool]:
    """The workloads ``spec`` names (names and groups, see ``--models``), and whether every
    one was named by itself (then ``--quick`` runs it even when it would skip it)."""
    from .suite import BY_NAME, GROUPS

    chosen, explicit = [], True
    for part in (p.strip() for p in spec.split(",") if p.strip() and p.strip() != "none"):
        if part in GROUPS:
            chosen += GROUPS[part]
            explicit = False
        elif part in BY_NAME:
            chosen.append(part)
        else:
            raise SystemExit(f"unknown model {part!r}; known: {', '.join(GROUPS)} (groups), "
                             f"{', '.join(BY_NAME)}")
    return [BY_NAME[name] for name in dict.fromkeys(chosen)], explicit


def _cross_checked(spec: str, chosen: list, quick: bool) -> frozenset[str]:
    """The model names ``--cross-check`` selects among the ``chosen`` workloads (``first``:
    none in a ``--quick`` run, whose two calls per row time nothing)."""
    names = [w.name for w in chosen]
    if spec == "first":
        return frozenset() if quick else frozenset(names[:2])
    if spec == "all":
        return frozenset(names)
    return frozenset(n.strip() for n in spec.split(",") if n.strip() and n.strip() != "none")


def cmd_run(args: argparse.Namespace) -> int:
    """Measure, print the tables, save JSON/charts; exit 1 if any row failed or mismatched."""
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
        if args.device == "cpu":
            os.environ.setdefault("TRITON_INTERPRET", "1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but CUDA is not available")
    # Same for every backend. TF32 rounding (~1e-3), amplified by BatchNorm's backward,
    # moved ResNet-18's first-step gradients 6-11% between eager and every other backend
    # on the H100, Dynamo's cudagraphs included: too much for a meaningful check.
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.tf32
    try:
        return _run(args, torch.device(args.device))
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _run(args: argparse.Namespace, device) -> int:
    from . import backends as backend_mod
    from . import charts, report

    counts = {k: getattr(args, k) if getattr(args, k) is not None else v
              for k, v in (QUICK if args.quick else FULL).items()}
    chosen = _names(args.backends, backend_mod.BY_NAME, "backend")
    chosen = [backend_mod.BY_NAME["eager"]] + [b for b in chosen if b.name != "eager"]
    results = report.new_results(report.metadata(device, {
        "quick": args.quick, **counts, "backends": [b.name for b in chosen],
        "kernel_counts": args.kernel_counts}))

    def save() -> None:
        report.save(results, args.json_path)

    _run_micro(args, device, counts, chosen, results, save)
    _run_models(args, device, counts, chosen, results, save)
    save()
    print(report.format_results(results))
    if args.charts:
        charts.make_charts(results, args.charts)
    return 1 if report.failures(results) else 0


def _run_micro(args, device, counts, chosen, results, save) -> None:
    from . import micro
    from .backends import MICRO_BACKENDS

    cases = micro.select_cases(args.micro)
    if not cases:
        return
    done = micro.run_micro(
        cases, [b for b in chosen if b.name in MICRO_BACKENDS], device, args.quick,
        counts["iters"], counts["warmup"], args.kernel_counts,
        on_row=lambda row: (results["micro"]["rows"].append(row), save()))
    results["micro"]["copy_gbps"] = done["copy_gbps"]


def _run_models(args, device, counts, chosen, results, save) -> None:
    from .measure import RunOptions, measure_workload

    chosen_models, explicit = _models(args.models)
    options = RunOptions(device=device, iters=counts["iters"], warmup=counts["warmup"],
                         trace_path=args.trace,
                         kernel_counts=args.kernel_counts,
                         cross_check=_cross_checked(args.cross_check, chosen_models,
                                                                 args.quick))
    deadline = None if args.budget_s is None else time.monotonic() + args.budget_s
    for workload in chosen_models:
        missing = workload.missing()
        if missing:
            reason = f"needs {missing}, which is not installed"
        elif args.quick and workload.quick_skip and not explicit:
            reason = f"--quick: {workload.quick_skip} (name it in --models to run it anyway)"
        else:
            reason = ""
        if reason:
            results["skipped"].append({"what": workload.name, "reason": reason})
            print(f"[bench] skipping {workload.name}: {reason}", file=sys.stderr)
            continue
        measure_workload(workload, chosen, options,
                         lambda row: (results["models"].append(row), save()), deadline)


def cmd_compare(args: argparse.Namespace) -> int:
    """Exit 0 when no kitsune ratio dropped more than the threshold, 1 when one did, 2 when
    the files cannot be compared."""
    from . import report
    from .compare import compare, format_verdicts

    try:
        new = [report.load(path) for path in args.new]
        baseline = [report.load(path) for path in args.baseline]
        verdicts, warnings = compare(new, baseline, args.threshold, args.min_runs)
    except (OSError, ValueError) as exc:
        print(f"compare: cannot compare: {exc}", file=sys.stderr)
        return 2
    print(format_verdicts(verdicts, warnings))
    return 1 if any(v.problem for v in verdicts) else 0


def cmd_charts(args: argparse.Namespace) -> int:
    """Draw the charts for an existing results file (exit 1 without matplotlib)."""
    from . import charts, report

    return 0 if charts.make_charts(report.load(args.results), args.out) else 1


def cmd_merge(args: argparse.Namespace) -> int:
    """Write the merged results of several runs (exit 2 when they cannot be merged)."""
    from . import report

    try:
        merged = report.merge([report.load(path) for path in args.parts])
        if args.counts:
            report.fill_counts(merged, report.load(args.counts))
    except (OSError, ValueError) as exc:
        print(f"merge: {exc}", file=sys.stderr)
        return 2
    report.save(merged, args.out)
    print(report.format_results(merged))
    return 0
