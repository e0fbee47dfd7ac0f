"""The command line: ``python -m kitsune_backend ...`` or ``kitsune ...``.

* ``doctor``: is this machine ready (versions, CUDA, a generated kernel run, the kernel
  cache, the entry points)? Exit 1 when a check fails;
* ``explain SCRIPT [args...]``: run a script, then explain every graph kitsune compiled;
* ``cache info`` / ``cache clear``: the on-disk kernel cache;
* ``bench MODEL``: the repository's benchmark harness (``benchmarks/``) for one model.

Exit codes: 0 success, 1 a failed check, script or benchmark, 2 a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import runpy
import sys
import traceback
from typing import Any, Callable, Iterator, Optional

from . import doctor
from .codegen import cache


class _Parser(argparse.ArgumentParser):
    """An argument parser whose ``epilog`` may be a function, called only to show help
    (``bench --help`` lists the models without loading the harness for other commands)."""

    def format_help(self) -> str:
        """The help text, with a callable epilog computed now."""
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = _Parser(prog="kitsune", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    cache_dir = argparse.ArgumentParser(add_help=False)
    cache_dir.add_argument("--cache-dir", default=None,
                           help="the kernel cache folder (default: the one compiles use, "
                                "KITSUNE_KERNEL_CACHE_DIR or ~/.cache/kitsune_backend)")

    sub.add_parser("doctor", parents=[cache_dir], help="check that this machine is ready",
                   description="Check versions, CUDA, a generated kernel, the kernel cache "
                               "and the entry points; exit 1 if any check fails.")

    explain = sub.add_parser("explain", help="run a script, then explain what kitsune compiled",
                             description="Run SCRIPT as __main__ with the given arguments, "
                                         "then print kitsune_backend.explain() for every "
                                         "compile it made. Exit 1 if the script failed.")
    explain.add_argument("--debug-dir", help="also dump every stage of every compiled graph "
                                             "here (the debug_dir option)")
    explain.add_argument("--schedule", action="store_true",
                         help="with --debug-dir: profile each graph's third call and add its "
                              "measured kernel schedule to the dump (the debug_schedule option)")
    explain.add_argument("script", help="the Python script to run")
    explain.add_argument("args", nargs=argparse.REMAINDER, help="the script's arguments")

    cache_cmd = sub.add_parser("cache", help="show or clear the kernel cache")
    cache_sub = cache_cmd.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    cache_sub.add_parser("info", parents=[cache_dir], help="folder, entries, size on disk")
    cache_sub.add_parser("clear", parents=[cache_dir], help="remove the cached kernels")

    _add_bench_parser(sub)
    return parser


def _add_bench_parser(sub: Any) -> None:
    bench = sub.add_parser("bench", help="benchmark one model (needs a clone of the repository)",
                           description="Run the repository's benchmark harness (benchmarks/,\n"
                                       "`python -m benchmarks run`) for one model: every "
                                       "chosen backend\nagainst eager, the harness's timing, "
                                       "checks and table.",
                           epilog=_models_help,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("model", help="a model name (listed below)")
    bench.add_argument("--backends", default="all",
                       help="comma list of backends, or 'all' (eager always runs)")
    bench.add_argument("--iters", type=int, help="timed calls per backend (default 100; "
                                                 "quick 2)")
    bench.add_argument("--warmup", type=int, help="untimed calls first (default 10; quick 1)")
    bench.add_argument("--device", choices=("cuda", "cpu"),
                       help="default: cuda when available, else cpu")
    bench.add_argument("--quick", action="store_true",
                       help="a couple of calls: checks correctness, not a speed measurement")


def main(argv: Optional[list[str]] = None) -> int:
    """Run one subcommand; returns the exit code (the ``kitsune`` console script's)."""
    args = build_parser().parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "doctor": cmd_doctor, "explain": cmd_explain, "cache": cmd_cache, "bench": cmd_bench,
    }
    return commands[args.command](args)


# ---- doctor


def cmd_doctor(args: argparse.Namespace) -> int:
    """Print every check; 1 when any failed."""
    import kitsune_backend

    print(f"kitsune_backend {kitsune_backend.__version__} "
          f"({os.path.dirname(os.path.abspath(kitsune_backend.__file__))})")
    results = doctor.run_checks(args.cache_dir)
    for result in results:
        print("\n".join(result.lines()), flush=True)
    failed = [r.name for r in results if not r.ok]
    print(f"\n{len(failed)} of {len(results)} checks failed: {', '.join(failed)}" if failed
          else f"\nall {len(results)} checks passed")
    return 1 if failed else 0


# ---- explain


@contextlib.contextmanager
def _as_main(script: str, args: list[str]) -> Iterator[None]:
    """``sys.argv`` and ``sys.path[0]`` as ``python SCRIPT args...`` would set them."""
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        yield
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


def run_script(script: str, args: list[str]) -> bool:
    """Run ``script`` as ``__main__``; print its traceback (from the script's own frames) to
    stderr and return False if it raised or exited with a non-zero code."""
    try:
        with _as_main(script, args):
            runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        if exc.code in (None, 0):
            return True
        print(f"kitsune explain: {script} exited with code {exc.code}", file=sys.stderr)
        return False
    except Exception as exc:
        tb = exc.__traceback__
        target = os.path.abspath(script)
        while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) != target:
            tb = tb.tb_next
        traceback.print_exception(type(exc), exc, tb or exc.__traceback__)
        print(f"kitsune explain: {script} raised {type(exc).__name__}", file=sys.stderr)
        return False
    return True


def _print_compiles(first_id: int) -> None:
    """Explain every session started since the one numbered ``first_id``."""
    from .inspection import explain, history
    from .process import PROCESS

    started = PROCESS.history.started - first_id
    sessions = [s for s in history() if s.id >= first_id]
    if not started:
        print("kitsune compiled nothing: no torch.compile(..., backend='kitsune') function "
              "was called (a compile happens at the first call, not at torch.compile)")
        return
    graphs = sum(len(s.records) for s in sessions)
    print(f"==== kitsune compiled {started} time(s), {graphs} graph(s) ====")
    if len(sessions) < started:
        print(f"(the first {started - len(sessions)} compile(s) are no longer in the history, "
              "which keeps the last ones only)")
    for session in sessions:
        print(explain(session))


def cmd_explain(args: argparse.Namespace) -> int:
    """Run the script (with the debug dump on when asked), then explain its compiles."""
    from . import config
    from .process import PROCESS

    if not os.path.isfile(args.script):
        print(f"kitsune explain: no such file: {args.script}", file=sys.stderr)
        return 2
    if args.schedule and not args.debug_dir:
        print("kitsune explain: --schedule writes into the debug dump: give --debug-dir too",
              file=sys.stderr)
        return 2
    first_id = PROCESS.history.started
    dump = config.patch(debug_dir=os.path.abspath(args.debug_dir),
                        debug_schedule=args.schedule) if args.debug_dir \
        else contextlib.nullcontext()
    with dump:
        ok = run_script(args.script, list(args.args))
    sys.stdout.flush()
    _print_compiles(first_id)
    if args.debug_dir:
        found = sorted(os.listdir(args.debug_dir)) if os.path.isdir(args.debug_dir) else []
        print(f"debug dump: {os.path.abspath(args.debug_dir)} ({len(found)} folder(s))")
    return 0 if ok else 1


# ---- cache


def _size(nbytes: int) -> str:
    if nbytes < 1024:
        return f"{nbytes} bytes"
    if nbytes < 1024 ** 2:
        return f"{nbytes / 1024:.1f} KiB"
    return f"{nbytes / 1024 ** 2:.1f} MiB"


def cmd_cache(args: argparse.Namespace) -> int:
    """``cache info`` or ``cache clear`` on the chosen folder."""
    folder = args.cache_dir or doctor.default_cache_dir()
    if args.cache_command == "info":
        return cache_info(folder)
    return cache_clear(folder)


def cache_info(folder: str) -> int:
    """Print the folder, how many generated kernels it holds, and its size on disk."""
    print(f"kernel cache: {folder}")
    if not os.path.isdir(folder):
        print("  (does not exist yet: nothing is cached)")
        return 0
    sources = cache.cached_sources(folder)
    versions = sorted({os.path.basename(os.path.dirname(os.path.dirname(p))) for p in sources})
    print(f"  generated kernels: {len(sources)}"
          + (f" ({', '.join(versions)})" if versions else ""))
    print(f"  size on disk: {_size(cache.disk_usage(folder))}")
    if os.environ.get("TRITON_CACHE_DIR"):
        print(f"  Triton binaries: {cache.triton_dir(folder)} (TRITON_CACHE_DIR: not counted "
              "here, not cleared)")
    return 0


def cache_clear(folder: str) -> int:
    """Remove kitsune's folders under ``folder``; say what went and what was left alone."""
    if not os.path.isdir(folder):
        print(f"kernel cache: {folder} does not exist: nothing to remove")
        return 0
    size = cache.disk_usage(folder)
    try:
        removed = cache.clear(folder)
    except OSError as exc:
        print(f"kernel cache: could not clear {folder}: {exc}", file=sys.stderr)
        return 1
    freed = size - cache.disk_usage(folder)
    if removed:
        print(f"removed {len(removed)} folder(s) from {folder} ({_size(freed)}):")
        print("\n".join(f"  {path}" for path in removed))
    else:
        print(f"kernel cache: {folder} holds no cached kernels: nothing to remove")
    others = sorted(os.listdir(folder))
    if others:
        print(f"left alone (not written by kitsune): {', '.join(others)}")
    return 0


# ---- bench


class HarnessMissing(RuntimeError):
    """The benchmark harness (the repository's ``benchmarks/`` folder) cannot be imported."""


def load_harness() -> tuple[Any, Any]:
    """The harness's ``benchmarks.cli`` and ``benchmarks.suite`` modules. The clone this
    package sits in comes first on ``sys.path`` (an editable install run from anywhere)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isfile(os.path.join(root, "benchmarks", "cli.py")) and root not in sys.path:
        sys.path.insert(0, root)
    try:
        from benchmarks import cli as harness_cli, suite
    except ImportError as exc:
        raise HarnessMissing(
            f"the benchmark harness is not importable ({exc}): it is the repository's "
            "benchmarks/ folder, which is not installed with the package. Run `kitsune "
            "bench` from a clone of the repository (git clone ...; pip install -e .)"
        ) from exc
    return harness_cli, suite


def _models_help() -> str:
    try:
        _, suite = load_harness()
    except HarnessMissing as exc:
        return f"models: unavailable here: {exc}"
    width = max(len(w.name) for w in suite.ALL)
    lines = ["models (name, train step or inference, what it is):"]
    lines += [f"  {w.name:<{width}}  {w.kind:<5}  {w.description}" for w in suite.ALL]
    return "\n".join(lines)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the harness's ``run`` for one model (2 for an unknown model, 1 without it)."""
    try:
        harness_cli, suite = load_harness()
    except HarnessMissing as exc:
        print(f"kitsune bench: {exc}", file=sys.stderr)
        return 1
    if args.model not in suite.BY_NAME:
        print(f"kitsune bench: unknown model {args.model!r}; models: "
              f"{', '.join(suite.BY_NAME)}", file=sys.stderr)
        return 2
    argv = ["run", "--models", args.model, "--backends", args.backends, "--micro", "none"]
    for flag, value in (("--iters", args.iters), ("--warmup", args.warmup),
                        ("--device", args.device)):
        argv += [flag, str(value)] if value is not None else []
    argv += ["--quick"] if args.quick else []
    try:
        return harness_cli.main(argv)
    except SystemExit as exc:  # the harness's own refusals (an unknown backend, no CUDA)
        print(f"kitsune bench: {exc.code}", file=sys.stderr)
        return exc.code if isinstance(exc.code, int) else 2
