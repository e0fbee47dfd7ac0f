"""Injected faults: each one ends with eager's results, a reason in the compile record (and
so in ``explain()``), and a process that still compiles.

(a) a generated kernel that does not compile or does not even load: only its region runs
as ATen ops; (b) a compile worker killed mid-compile: that request fails with the reason,
the next one runs on a replacement; (c) a corrupt or truncated kernel cache entry: rebuilt
(or, when it cannot be, its region runs as ATen ops), with the reason; (d) out of memory
during CUDA graph capture: the graph runs uncaptured, with the reason; (e) a full disk
under the debug dump: the compile is unaffected, with the reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import signal
import threading
import time
import types

import pytest
import torch

import kitsune_backend
from kitsune_backend import debug_dump
from kitsune_backend.binding import capture as capture_stage
from kitsune_backend.codegen import cache, compile_pool, precompile
from kitsune_backend.config import Config
from kitsune_backend.passes import fusion
from kitsune_backend.process import PROCESS
from kitsune_backend.runtime import capture as capture_runtime
from tests.conftest import DEVICES
from tests.helpers import assert_close


def _two_regions(x, w):
    """Two fused regions around a matmul: ``sigmoid_mul`` and ``tanh_add``."""
    return torch.tanh(torch.sigmoid(x) * 2 @ w) + 1


def _inputs(device="cpu", seed=0):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(8, 8, generator=generator).to(device) for _ in range(2))


def _reasons(record) -> str:
    return "\n".join(str(d) for d in record.declines)


def _still_compiles(device="cpu"):
    """The process is still usable: a new compile fuses, launches its kernel, matches."""
    torch._dynamo.reset()
    x = torch.randn(4, 16, device=device)
    compiled = torch.compile(lambda t: torch.sigmoid(t) * 3 - 1, backend="kitsune",
                             options={"strict": True})
    assert_close(compiled(x), torch.sigmoid(x) * 3 - 1)
    (kernel,) = kitsune_backend.last_compile().forward.kernels
    assert kernel.compile_error == "" and kernel.kernel.fallback_calls == 0


# (a) ---------------------------------------------------------------------------------------

BREAKS = {
    # Triton rejects it when it compiles (under the interpreter: when it runs)
    "does_not_compile": lambda src: src.replace("):\n", "):\n    kitsune_broken_by_the_test()\n", 1),
    # Python cannot even import it
    "does_not_parse": lambda src: src + "\n)(\n",
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("how", sorted(BREAKS))
def test_a_kernel_that_fails_to_compile_falls_back_alone(how, device, tmp_path, monkeypatch):
    real = fusion.generate

    def generate(region, name, *args, **kwargs):
        made = real(region, name, *args, **kwargs)
        if "tanh" not in name:
            return made
        return dataclasses.replace(made, source=BREAKS[how](made.source))

    monkeypatch.setattr(fusion, "generate", generate)
    compiled = torch.compile(_two_regions, backend="kitsune",
                             options={"kernel_cache_dir": str(tmp_path)})
    for seed in (1, 2):  # the second call does not try the broken kernel again
        assert_close(compiled(*_inputs(device, seed)), _two_regions(*_inputs(device, seed)))
    record = kitsune_backend.last_compile().forward
    assert record.fallback_reason == ""  # the graph itself did not fall back
    good, broken = sorted(record.kernels, key=lambda k: "tanh" in k.name)
    assert "sigmoid" in good.name and good.compile_error == "" and good.kernel.fallback_calls == 0
    assert broken.kernel.fallback_calls == 2
    if how == "does_not_parse":
        assert broken.compile_error.startswith("its source did not load: SyntaxError")
    else:
        assert "kitsune_broken_by_the_test" in broken.compile_error
    assert f"{broken.name} did not compile, its region runs as ATen ops" in _reasons(record)
    assert "did not compile" in kitsune_backend.explain()
    monkeypatch.undo()
    _still_compiles(device)


def test_any_first_launch_error_falls_back_but_out_of_memory_propagates(monkeypatch):
    """A corrupt entry of Triton's own binary cache raises ``JSONDecodeError`` at the first
    launch on CUDA (the interpreter has no such cache: the error is injected)."""
    import json

    from kitsune_backend.codegen.kernel import FusedKernel

    errors = iter([json.JSONDecodeError("Expecting value", "\x00garbage", 0),
                   torch.OutOfMemoryError("out of memory (made up by the test)")])

    def launch(*args, **kwargs):
        raise next(errors)

    monkeypatch.setattr(FusedKernel, "_launch", staticmethod(launch))
    x = torch.randn(16)
    assert_close(torch.compile(lambda t: torch.sigmoid(t) * 2, backend="kitsune")(x),
                 torch.sigmoid(x) * 2)
    (kernel,) = kitsune_backend.last_compile().forward.kernels
    assert kernel.compile_error.startswith("JSONDecodeError: Expecting value")
    torch._dynamo.reset()
    with pytest.raises(torch.OutOfMemoryError, match="made up by the test"):
        torch.compile(lambda t: torch.cos(t) * 2, backend="kitsune")(x)
    (kernel,) = kitsune_backend.last_compile().forward.kernels
    assert kernel.compile_error == ""  # not mistaken for a compile error
    monkeypatch.undo()
    _still_compiles()


# (b) ---------------------------------------------------------------------------------------

KERNEL_FILE = '''import triton
import triton.language as tl


@triton.jit
def kernel(x_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(x_ptr + offsets, tl.load(x_ptr + offsets, mask=offsets < n) * 2, mask=offsets < n)
'''


def _compile_request(tmp_path) -> dict:
    """A real request: compile a small kernel for sm_90 (Triton's bundled ptxas, no GPU)."""
    from triton.backends.compiler import GPUTarget

    path = tmp_path / "real_kernel.py"
    path.write_text(KERNEL_FILE)
    return {"path": str(path), "module": "kitsune_test_real_kernel", "name": "kernel",
            "signature": {"x_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"},
            "constants": {"BLOCK": 128}, "attrs": {}, "options": {},
            "target": GPUTarget("cuda", 90, 32), "cache_dir": str(tmp_path / "triton"),
            "env": {}}


def _stalling_request(tmp_path) -> dict:
    """A request whose 'kernel source' writes the worker's pid to a file, then stalls."""
    path = tmp_path / "stall.py"
    path.write_text(f"import os, time\nopen({str(tmp_path / 'pid')!r}, 'w').write("
                    "str(os.getpid()))\ntime.sleep(60)\n")
    return {"path": str(path), "module": "kitsune_test_stall", "name": "kernel",
            "cache_dir": str(tmp_path / "triton"), "env": {}}


def _kill_when_compiling(tmp_path) -> threading.Thread:
    """Kill the worker process once it is inside the stalling request."""
    def kill():
        pid_file = tmp_path / "pid"
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def test_a_worker_killed_mid_compile_fails_that_request_alone(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    pool = compile_pool.CompilePool()
    real = _compile_request(tmp_path)
    requests = iter([_stalling_request(tmp_path), real, real, real])
    monkeypatch.setattr(precompile, "capture_request", lambda kernel: next(requests))
    kernels = [types.SimpleNamespace(__name__=f"k{i}", compile_error="",
                                     generated=types.SimpleNamespace(grid=1, source=""))
               for i in range(4)]
    killer = _kill_when_compiling(tmp_path)
    try:
        report = precompile.precompile(kernels, Config(compile_workers=1), torch.device("cuda"),
                                       pool)
        killer.join(timeout=5)
        assert report.workers == 1 and pool.size == 1
        # the killed request fails with the reason; the next ones ran on a new worker
        (decline,) = report.declines()
        assert decline.node == "k0" and "the worker exited" in decline.reason
        assert "exit code -9" in decline.reason
        assert report.precompiled == 3
        again = pool.run([real], workers=1)  # and the pool keeps serving
        assert again[0]["ok"] and again[0]["cache_hit"]
    finally:
        pool.close()


# (c) ---------------------------------------------------------------------------------------

def _garbage(path):
    path.write_bytes(os.urandom(200))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _bad_checksum(path):
    path.with_suffix(".sha256").write_text("0" * 64 + "\n")


def _directory_in_the_way(path):
    path.unlink()
    path.mkdir()  # the entry can be neither read nor rewritten


CORRUPTIONS = {"garbage": _garbage, "truncated": _truncate, "bad_checksum": _bad_checksum,
               "unrepairable": _directory_in_the_way}


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_a_corrupt_kernel_cache_entry_is_rebuilt_or_skipped(how, tmp_path, monkeypatch):
    options = {"kernel_cache_dir": str(tmp_path)}
    # a process of its own, which imports its kernels through this cache folder
    monkeypatch.setattr(PROCESS, "kernel_cache", cache.KernelCache())
    torch.compile(_two_regions, backend="kitsune", options=options)(*_inputs())
    first = kitsune_backend.last_compile().forward
    entries = {k.name: cache.source_hash(k.source) for k in first.kernels}
    folder = cache.source_dir(str(tmp_path))
    target = next(name for name in entries if "tanh" in name)
    path = type(tmp_path)(folder) / f"{entries[target]}.py"
    CORRUPTIONS[how](path)
    # a new process: it has imported nothing yet, so it reads the disk cache
    monkeypatch.setattr(PROCESS, "kernel_cache", cache.KernelCache())
    torch._dynamo.reset()
    fresh = _inputs(seed=3)
    assert_close(torch.compile(_two_regions, backend="kitsune", options=options)(*fresh),
                 _two_regions(*fresh))
    record = kitsune_backend.last_compile().forward
    kernel = next(k for k in record.kernels if k.name == target)
    reasons = _reasons(record)
    if how == "unrepairable":
        assert kernel.compile_error.startswith("its source did not load: IsADirectoryError")
        assert "did not compile, its region runs as ATen ops" in reasons
    else:
        assert kernel.compile_error == "" and kernel.kernel.fallback_calls == 0
        assert path.read_text() == kernel.source  # rebuilt
        assert f"kernel cache entry of {target} not used, it was corrupt" in reasons
        assert "not used, it was corrupt" in kitsune_backend.explain()
    other = next(k for k in record.kernels if k.name != target)
    assert other.compile_error == "" and other.name not in reasons
    _still_compiles()


@pytest.mark.gpu
def test_a_corrupt_triton_binary_cache_falls_back_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    monkeypatch.setattr(PROCESS, "kernel_cache", cache.KernelCache())
    options = {"kernel_cache_dir": str(tmp_path), "cuda_graphs": False}
    x = torch.randn(64, device="cuda")
    torch.compile(lambda t: torch.sigmoid(t) * 2 + 1, backend="kitsune", options=options)(x)
    for root, _, files in os.walk(cache.triton_dir(str(tmp_path))):
        for name in files:
            # a new file put in its place, as another process would: writing into the
            # file itself would change the pages of a library this process has loaded
            # (a bus error when it touches them)
            path = os.path.join(root, name)
            with open(path + ".new", "wb") as f:
                f.write(os.urandom(64))
            os.replace(path + ".new", path)
    monkeypatch.setattr(PROCESS, "kernel_cache", cache.KernelCache())  # a new process
    torch._dynamo.reset()
    out = torch.compile(lambda t: torch.sigmoid(t) * 2 + 1, backend="kitsune", options=options)(x)
    assert_close(out, torch.sigmoid(x) * 2 + 1)
    (kernel,) = kitsune_backend.last_compile().forward.kernels
    if kernel.compile_error:  # Triton read the garbage: the region ran as ATen, with why
        assert "did not compile" in _reasons(kitsune_backend.last_compile().forward)
    _still_compiles("cuda")


# (d) ---------------------------------------------------------------------------------------

class _FakeStream:
    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, other):
        pass


class _FakeGraph:
    replays = 0

    def replay(self):
        _FakeGraph.replays += 1


def _fake_cuda(monkeypatch, fail_at: str) -> dict:
    """What capture needs from CUDA, faked on the CPU; the capture runs out of memory when
    it begins (the graph's private pool) or when it ends (instantiating the graph). Like
    ``torch.cuda.graph``, the fake makes the capture stream current before it begins and
    puts the caller's back only on exit. Returns the current-stream state."""
    state = {"current": _FakeStream()}

    @contextlib.contextmanager
    def graph(cuda_graph, stream=None):
        caller, state["current"] = state["current"], stream
        if fail_at == "begin":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB "
                                         "(made up by the test)\nsecond line")
        try:
            yield
        finally:
            state["current"] = caller
        raise torch.OutOfMemoryError("CUDA out of memory (made up by the test)")

    monkeypatch.setattr(torch.cuda, "Stream", _FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: state["current"])
    monkeypatch.setattr(torch.cuda, "set_stream", lambda s: state.update(current=s))
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(capture_runtime, "own_cublas_workspaces", contextlib.nullcontext)
    # CPU tensors are never captured: let the capture stage take this graph anyway
    monkeypatch.setattr(capture_stage, "capture_decline", lambda *args: "")
    return state


@pytest.mark.parametrize("fail_at", ["begin", "end"])
def test_out_of_memory_during_capture_runs_uncaptured(fail_at, monkeypatch):
    state = _fake_cuda(monkeypatch, fail_at)
    caller = state["current"]
    compiled = torch.compile(_two_regions, backend="kitsune")
    for seed in range(4):  # warm-up, the capture that fails, then uncaptured calls
        assert_close(compiled(*_inputs(seed=seed)), _two_regions(*_inputs(seed=seed)))
        assert state["current"] is caller  # the uncaptured calls run on the caller's stream
    record = kitsune_backend.last_compile().forward
    assert record.stats["capture"].startswith("declined: capture failed: OutOfMemoryError")
    assert record.stats["uncaptured_calls"] == 4 and _FakeGraph.replays == 0
    (decline,) = [d for d in record.declines if d.stage == "cuda_graphs"]
    assert "made up by the test" in decline.reason and "\n" not in decline.reason
    assert "capture failed: OutOfMemoryError" in kitsune_backend.explain()
    monkeypatch.undo()
    _still_compiles()


@pytest.mark.gpu
def test_out_of_memory_during_a_real_capture_runs_uncaptured(monkeypatch):
    def no_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (made up by the test)")

    monkeypatch.setattr(torch.cuda.CUDAGraph, "capture_begin", no_memory)
    compiled, caller = torch.compile(_two_regions, backend="kitsune"), torch.cuda.current_stream()
    for seed in range(3):
        assert_close(compiled(*_inputs("cuda", seed)), _two_regions(*_inputs("cuda", seed)))
        assert torch.cuda.current_stream() == caller
    record = kitsune_backend.last_compile().forward
    assert record.stats["capture"].startswith("declined: capture failed: OutOfMemoryError")
    assert record.stats["uncaptured_calls"] == 3
    monkeypatch.undo()
    _still_compiles("cuda")


# (e) ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("full_after", [0, 3], ids=["first_file", "midway"])
def test_a_full_disk_under_the_debug_dump_leaves_the_compile_alone(full_after, tmp_path,
                                                                   monkeypatch):
    written = []
    real_write = debug_dump._write

    def write(folder, name, text):
        if len(written) >= full_after:
            raise OSError(errno.ENOSPC, "No space left on device", os.path.join(folder, name))
        written.append(name)
        real_write(folder, name, text)

    monkeypatch.setattr(debug_dump, "_write", write)
    compiled = torch.compile(_two_regions, backend="kitsune",
                             options={"debug_dir": str(tmp_path / "dump")})
    with pytest.warns(RuntimeWarning, match="No space left on device") as warned:
        out = compiled(*_inputs(seed=5))
    assert_close(out, _two_regions(*_inputs(seed=5)))
    assert len(warned) == 1 and "\n" not in str(warned[0].message)  # one line, no traceback
    record = kitsune_backend.last_compile().forward
    assert record.fallback_reason == "" and all(k.compile_error == "" for k in record.kernels)
    (decline,) = [d for d in record.declines if d.stage == "debug_dump"]
    assert "could not write the debug dump" in decline.reason
    assert "No space left on device" in kitsune_backend.explain()
    monkeypatch.undo()
    _still_compiles()
