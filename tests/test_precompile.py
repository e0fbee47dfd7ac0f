"""Compiling generated kernels ahead on worker processes: the worker, the pool, the report.

The real compile path runs without a GPU in a child process without ``TRITON_INTERPRET``
(tests/precompile_child.py fakes Triton's driver and compiles for sm_90 with the bundled
ptxas). The pool's failure handling runs here, with requests whose "kernel source" fails on
purpose.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import threading
import time
import types

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from kitsune_backend.codegen import compile_pool, precompile
from kitsune_backend.config import Config, resolve
from kitsune_backend.errors import KitsuneConfigError
from kitsune_backend.ir import PassContext
from kitsune_backend.codegen.lowering import generate_kernels
from kitsune_backend.codegen.precompile import precompile_kernels
from kitsune_backend.passes.fusion import fuse
from kitsune_backend.process import PROCESS
from tests.helpers import rand
from tests.helpers_graphs import fused

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _child(what: str, tmp_path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "precompile_child.py"),
                           what, str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_worker_fills_the_cache_the_first_launch_reads(tmp_path):
    facts = _child("worker", tmp_path)
    # the warm-up compiled for the target, in a throwaway cache, and put TRITON_CACHE_DIR back
    assert facts["warm_up"] == "" and facts["cache_dir_after_warm_up"]
    assert facts["entries_after_warm_up"] == 0
    assert facts["kernels"] == 3 and facts["captured"]
    reply = facts["reply"]
    assert reply["ok"] and not reply["cache_hit"]
    # The C launcher needs libcuda's folder, which a machine without a GPU driver lacks:
    # then the parent's first launch builds it, and the reply says why it was not built.
    assert reply["launcher"] == "" or reply["launcher"].startswith("not built: ")
    assert facts["entries_after_worker"] == 1
    assert not facts["request_after_worker"]  # found in the disk cache: nothing to send
    assert facts["hits"] == [True]  # the parent's compile loads the worker's binary
    assert not facts["cuda_initialized"]


def test_precompile_through_the_pool(tmp_path):
    facts = _child("pool", tmp_path)
    # three kernels are fewer than MIN_KERNELS_FOR_WORKERS: no worker started for them
    assert facts["few"]["skipped"].startswith("3 kernel(s) left to compile, fewer than 4")
    assert facts["few"]["pool_size"] == 0
    assert facts["skipped"] == "" and facts["failures"] == []
    assert facts["report"]["kernels_precompiled"] == 3
    assert facts["report"]["precompile_workers"] == 2
    assert facts["pool_target"] == ["cuda", 90, 32]  # later workers warm up for the device
    assert facts["hits"] == [True, True, True] and facts["new_entries"] == 0
    assert facts["again"]["kernels_already_compiled"] == 3
    assert facts["again"]["kernels_precompiled"] == 0


def _request(path) -> dict:
    return {"path": str(path), "module": "kitsune_test_module", "name": "kernel",
            "cache_dir": str(path.parent / "triton"), "env": {}}


@pytest.fixture
def own_pool():
    """A pool of its own (not the process's), closed afterwards."""
    made = compile_pool.CompilePool()
    yield made
    made.close()


def test_pool_reports_failures_and_replaces_dead_workers(tmp_path, own_pool):
    crash = tmp_path / "crash.py"
    crash.write_text("import os\nos._exit(3)\n")
    probe = tmp_path / "probe.py"
    probe.write_text("import os, sys\nraise RuntimeError(f\"torch={'torch' in sys.modules} "
                     "cuda={os.environ.get('CUDA_VISIBLE_DEVICES')!r}\")\n")
    replies = own_pool.run([_request(tmp_path / "missing.py"), _request(crash),
                            _request(probe), _request(probe)], workers=1)
    assert [r["ok"] for r in replies] == [False] * 4
    assert replies[0]["error"].startswith("FileNotFoundError")
    assert "the worker exited" in replies[1]["error"] and "exit code 3" in replies[1]["error"]
    # the next request got a fresh worker, which imports neither torch nor sees a GPU
    assert replies[2]["error"] == replies[3]["error"] == "RuntimeError: torch=False cuda=''"
    assert own_pool.size == 1


def test_pool_abandons_a_hung_compile(tmp_path, own_pool):
    slow = tmp_path / "slow.py"
    slow.write_text("import time\ntime.sleep(60)\n")
    (reply,) = own_pool.run([_request(slow)], workers=1, timeout=1.0)
    assert not reply["ok"] and "no reply within 1 s" in reply["error"]
    assert own_pool.size == 0  # killed; the next run starts a new one


@pytest.mark.parametrize("bootstrap, start_timeout, why", [
    ("import sys; sys.exit(5)", 30.0, "exited with code 5 before it was ready"),
    ("import time; time.sleep(60)", 1.0, "was not ready within 1 s"),
])
def test_workers_that_cannot_start_mark_the_pool_broken(bootstrap, start_timeout, why,
                                                        tmp_path, own_pool, monkeypatch):
    monkeypatch.setattr(compile_pool, "BOOTSTRAP", bootstrap)
    monkeypatch.setattr(compile_pool, "START_TIMEOUT_S", start_timeout)
    replies = own_pool.run([_request(tmp_path / "a.py"), _request(tmp_path / "b.py")], workers=2)
    assert [r["ok"] for r in replies] == [False, False]
    assert all(r["error"].startswith("no compile workers: WorkerStartError") for r in replies)
    assert why in own_pool.broken
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    report = precompile.precompile(_kernels(2), Config(compile_workers=2), torch.device("cuda"),
                                   own_pool)
    assert report.skipped.startswith("the compile workers could not start")


def _unused_pool():
    """A pool that is healthy but must not be asked to compile."""
    def run(*args, **kwargs):
        pytest.fail("the pool was asked to compile")

    return types.SimpleNamespace(broken="", run=run)


def _kernels(count: int) -> list:
    return [types.SimpleNamespace(__name__=f"k{i}", compile_error="",
                                  generated=types.SimpleNamespace(grid=4, source=""))
            for i in range(count)]


def test_failures_become_declines_not_errors(tmp_path, monkeypatch, own_pool):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    requests = iter([_request(tmp_path / f"gone{i}.py") if i != 1 else None for i in range(5)])
    monkeypatch.setattr(precompile, "capture_request", lambda kernel: next(requests))
    report = precompile.precompile(_kernels(5), Config(compile_workers=2), torch.device("cuda"),
                                   own_pool)
    assert report.stats()["kernels_precompiled"] == 0
    assert report.stats()["kernels_already_compiled"] == 1
    assert report.stats()["precompile_failures"] == 4
    declines = report.declines()
    assert [d.node for d in declines] == ["k0", "k2", "k3", "k4"]
    assert all("compiles at its first launch: FileNotFoundError" in d.reason for d in declines)


def test_capture_errors_are_reported(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)

    def broken(kernel):
        raise RuntimeError("no driver")

    monkeypatch.setattr(precompile, "capture_request", broken)
    report = precompile.precompile(_kernels(2), Config(compile_workers=2), torch.device("cuda"),
                                   _unused_pool())
    assert report.failures == [("k0", "request not captured: RuntimeError: no driver"),
                               ("k1", "request not captured: RuntimeError: no driver")]


@pytest.mark.parametrize("config, device, interpret, why", [
    (Config(compile_workers=0), "cuda", False, "compile_workers=0"),
    (Config(compile_workers=2), "cuda", True, "TRITON_INTERPRET=1"),
    (Config(compile_workers=2), "cpu", False, "kernels on cpu"),
])
def test_no_precompile_when_it_cannot_help(config, device, interpret, why, monkeypatch):
    if not interpret:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(precompile, "capture_request", pytest.fail)
    report = precompile.precompile(_kernels(3), config, torch.device(device), _unused_pool())
    assert why in report.skipped and report.stats()["kernels_precompiled"] == 0


@pytest.mark.parametrize("left", [1, precompile.MIN_KERNELS_FOR_WORKERS - 1])
def test_too_few_kernels_start_no_worker(left, tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    requests = iter([None] + [_request(tmp_path / f"k{i}.py") for i in range(left)])
    monkeypatch.setattr(precompile, "capture_request", lambda kernel: next(requests))
    report = precompile.precompile(_kernels(left + 1), Config(compile_workers=2),
                                   torch.device("cuda"), _unused_pool())
    assert report.skipped.startswith(f"{left} kernel(s) left to compile, fewer than")
    assert report.declines() == [] and report.workers == 0


def test_the_pool_follows_the_work_and_is_shared(tmp_path, monkeypatch, own_pool):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(precompile, "capture_request",
                        lambda kernel: _request(tmp_path / f"{kernel.__name__}.py"))
    sizes = []
    for kernels, workers in [(4, 2), (5, 16), (4, 16)]:
        report = precompile.precompile(_kernels(kernels), Config(compile_workers=workers),
                                       torch.device("cuda"), own_pool)
        assert len(report.failures) == kernels  # FileNotFoundError: each was sent
        sizes.append((report.workers, own_pool.size))
    # min(compile_workers, kernels) work at once; the pool grows, and never shrinks
    assert sizes == [(2, 2), (5, 5), (4, 5)]


def test_precompile_reports_progress_per_kernel(tmp_path, monkeypatch, own_pool):
    """A compile's progress hears the kernels compiled of the total, one by one."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(precompile, "capture_request",
                        lambda kernel: _request(tmp_path / f"{kernel.__name__}.py"))
    heard = types.SimpleNamespace(lines=[])
    heard.report = heard.lines.append
    precompile.precompile(_kernels(5), Config(compile_workers=2), torch.device("cuda"),
                          own_pool, heard)
    assert heard.lines == [f"kernels compiled {n}/5" for n in range(1, 6)]


def test_precompile_stage_reports_the_interpreter(tmp_path):
    x = rand(4, 8)
    gm = make_fx(lambda x: torch.relu(x * 2) + 1, tracing_mode="fake")(x)
    ctx = PassContext(config=Config(kernel_cache_dir=str(tmp_path), compile_workers=2),
                      graph_name="t", example_inputs=(x,), process=PROCESS)
    fuse(gm, ctx)
    generate_kernels(gm, ctx)
    result = precompile_kernels(gm, ctx)
    assert result.stats["kernels_precompiled"] == 0 and result.stats["precompile_workers"] == 0
    assert any("TRITON_INTERPRET=1" in note for note in result.notes)
    _, (kernel,) = fused(lambda x: torch.relu(x * 2) + 1, x, cache_dir=str(tmp_path))
    torch.testing.assert_close(kernel(x), torch.relu(x * 2) + 1)


def test_compile_workers_option(monkeypatch):
    assert Config().compile_workers == min(16, max(0, (os.cpu_count() or 1) - 1))
    monkeypatch.setenv("KITSUNE_COMPILE_WORKERS", "3")
    assert resolve().compile_workers == 3
    assert resolve(options={"compile_workers": 0}).compile_workers == 0
    with pytest.raises(KitsuneConfigError, match="'compile_workers' must be 0"):
        resolve(options={"compile_workers": -1})
    monkeypatch.setenv("KITSUNE_COMPILE_WORKERS", "-2")
    with pytest.raises(KitsuneConfigError, match="'compile_workers' must be 0"):
        resolve()
    with pytest.raises(KitsuneConfigError, match="must be an int"):
        Config().replace(compile_workers="many")


def _tagged(tag: str) -> list[int]:
    """Processes whose environment carries ``PROCESS_TEST_TAG=tag`` (a child's workers
    inherit it)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if f"PROCESS_TEST_TAG={tag}".encode() in f.read().split(b"\0"):
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


QUIET_CHILD = """
import os, sys, threading, time
import torch
import kitsune_backend
from kitsune_backend.process import PROCESS
tmp, how = sys.argv[1], sys.argv[2]
x = torch.randn(4, 8)
out = torch.compile(lambda t: torch.relu(t * 2) + 1, backend="kitsune")(x)
assert torch.allclose(out, torch.relu(x * 2) + 1)
assert PROCESS.compile_pool.size == 0  # a CPU compile starts no worker
PROCESS.compile_pool.worker_stderr = None  # what workers print would show on this stderr
missing = {"path": os.path.join(tmp, "missing.py"), "module": "m", "name": "kernel",
           "cache_dir": tmp, "env": {}}
PROCESS.compile_pool.run([missing, missing], workers=2)  # two live workers at exit
if how == "exit_mid_request":  # die with a worker compiling: its reply pipe breaks
    stall = os.path.join(tmp, "stall.py")
    with open(stall, "w") as f:
        f.write(f"import os, time\\nopen({os.path.join(tmp, 'pid')!r}, 'w').write(str(os.getpid()))"
                "\\ntime.sleep(1)\\n")
    threading.Thread(target=PROCESS.compile_pool.run, daemon=True,
                     args=([dict(missing, path=stall, module="stall")], 2)).start()
    while not os.path.exists(os.path.join(tmp, "pid")):
        time.sleep(0.02)
    os._exit(0)
"""


@pytest.mark.parametrize("how", ["normal_exit", "exit_mid_request"])
def test_a_process_with_workers_exits_silently_and_leaves_none(how, tmp_path):
    tag = f"{os.getpid()}-{how}"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TRITON_INTERPRET="1",
               PROCESS_TEST_TAG=tag)
    done = subprocess.run([sys.executable, "-c", QUIET_CHILD, str(tmp_path), how], env=env,
                          capture_output=True, text=True, timeout=120)
    # run() returns once the workers' inherited stderr closes too: all they ever printed
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    deadline = time.monotonic() + 5
    while _tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _tagged(tag) == []


def test_a_pool_closed_mid_request_prints_nothing(tmp_path, own_pool):
    stall = tmp_path / "stall.py"
    stall.write_text(f"import os, time\nopen({str(tmp_path / 'pid')!r}, 'w').write("
                     "str(os.getpid()))\ntime.sleep(0.5)\n")
    with open(tmp_path / "stderr.txt", "w") as stderr:
        own_pool.worker_stderr = stderr
        thread = threading.Thread(target=own_pool.run, daemon=True,
                                  args=([_request(stall)], 1))
        thread.start()
        while not (tmp_path / "pid").exists():
            time.sleep(0.02)
        pid = int((tmp_path / "pid").read_text() or 0) or None
        own_pool.close()  # the worker is inside the request
        thread.join(timeout=10)
    assert pid is not None and not os.path.exists(f"/proc/{pid}")  # reaped
    assert (tmp_path / "stderr.txt").read_text() == ""
