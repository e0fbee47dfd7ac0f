"""A pool of compile workers (:mod:`kitsune_backend.codegen.compile_worker`).

Why not ``concurrent.futures.ProcessPoolExecutor``: its ``spawn`` children re-run the user's
main script (everything outside ``if __name__ == "__main__":``, so an unguarded training
script would train again in every worker), they import ``kitsune_backend`` and so ``torch``
(seconds), and one crashed child breaks the whole executor. Here each worker is a plain
``subprocess`` that loads one standard-library-and-triton file, in its own session (Ctrl-C
in the terminal does not reach it), with ``CUDA_VISIBLE_DEVICES=""`` and without
``TRITON_INTERPRET``; it exits when its stdin closes, so it never outlives the parent.
Workers never print: their stderr goes to ``/dev/null`` unless the pool's ``worker_stderr``
says otherwise (``precompile`` passes the parent's own under ``debug=True``), and a worker
whose pipes close under it (the parent exited, or closed the pool mid-request) exits with
code 0 and no traceback.

The process has one pool (:class:`~kitsune_backend.process.ProcessState` makes it and closes
it at exit); it starts no worker until a :meth:`CompilePool.run` asks for some, and then
grows to the most any run asked for: later runs share the workers earlier ones started.
A worker that dies or hangs while compiling is replaced at the next request; its request
fails with the reason. A worker that cannot start at all (or does not say it is ready)
marks the pool ``broken`` for the rest of the process, so no later compile waits for
workers. Nothing here raises into a compile: failures come back as replies.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any, Callable, Optional, Sequence

WORKER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compile_worker.py")
BOOTSTRAP = (
    "import importlib.util, json, sys; sys.path[:] = json.loads(sys.argv[2]); "
    "spec = importlib.util.spec_from_file_location('kitsune_compile_worker', sys.argv[1]); "
    "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
    "module.main()"
)
REQUEST_TIMEOUT_S = 300.0
"""A compile that takes longer is abandoned (its worker killed); the kernel then compiles
at its first launch as it would without workers."""
START_TIMEOUT_S = 60.0
"""A worker says it is ready (Triton imported) within this, or the pool is marked broken."""


class WorkerStartError(RuntimeError):
    """A worker process could not be started or did not say it was ready."""


class Worker:
    """One worker process and the two pipe ends the parent holds; the worker writes its
    stderr to ``stderr`` (a ``subprocess`` target: ``/dev/null`` by default, ``None`` for
    this process's)."""

    def __init__(self, target: Optional[list] = None, stderr: Any = subprocess.DEVNULL) -> None:
        worker_in, to_worker = os.pipe()  # (read end, write end)
        worker_out, from_worker = os.pipe()
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
        env.pop("TRITON_INTERPRET", None)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", BOOTSTRAP, WORKER_FILE,
                 json.dumps([str(p) for p in sys.path]), json.dumps(target)],
                stdin=worker_in, stdout=from_worker, stderr=stderr, env=env,
                start_new_session=True,
            )
        except BaseException:
            for fd in (to_worker, worker_in, worker_out, from_worker):
                os.close(fd)
            raise
        os.close(worker_in)
        os.close(from_worker)
        self.send = Connection(to_worker, readable=False)
        self.recv = Connection(worker_out, writable=False)
        self.ready = False

    def wait_ready(self, timeout: float) -> None:
        """Return once the worker has said it is ready; else stop it and raise
        :class:`WorkerStartError` (it exited, hung, or is not a compile worker at all)."""
        if self.ready:
            return
        try:
            hello = self.recv.recv() if self.recv.poll(timeout) else None
        except (EOFError, OSError):
            hello = None
        if not (isinstance(hello, dict) and hello.get("ready")):
            self.stop(wait=0.5)
            code = self.process.returncode
            how = (f"was not ready within {timeout:.0f} s" if code == -signal.SIGKILL
                   else f"exited with code {code} before it was ready")
            raise WorkerStartError(f"the compile worker ({sys.executable} -c ...) {how} "
                                   "(debug=True shows its stderr)")
        self.ready = True

    def ask(self, request: dict, timeout: float) -> dict:
        """Send one request and wait for its reply; a failure reply if the worker died or
        took longer than ``timeout`` (the worker is then stopped)."""
        grace = 0.0  # a hung worker is killed at once
        try:
            self.send.send(request)
            if self.recv.poll(timeout):
                return self.recv.recv()
            why = f"no reply within {timeout:.0f} s"
        except (EOFError, OSError) as exc:
            why, grace = f"the worker exited ({type(exc).__name__})", 1.0
        except Exception as exc:  # an unpicklable request, a garbled reply
            why = f"{type(exc).__name__}: {exc}"
        self.stop(wait=grace)
        code = self.process.returncode
        return {"ok": False, "error": why + (f", exit code {code}" if code else "")}

    @property
    def alive(self) -> bool:
        """True while the process runs and its pipes are open."""
        return not self.send.closed and self.process.poll() is None

    def stop(self, wait: float = 1.0) -> None:
        """Close the pipes (the worker exits at end of input); kill it if it lingers."""
        self.close_pipes()
        self.reap(wait)

    def close_pipes(self) -> None:
        """Close the parent's pipe ends: the worker sees the end of its input."""
        for conn in (self.send, self.recv):
            if not conn.closed:
                conn.close()

    def reap(self, wait: float) -> None:
        """Wait up to ``wait`` seconds for the process to exit, then kill it."""
        try:
            self.process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class CompilePool:
    """Worker processes, as many as the largest :meth:`run` asked for; each run hands each
    request to the next idle one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _workers
        self._run_lock = threading.RLock()  # one batch (or growth) at a time
        self._workers: list[Worker] = []
        self.broken = ""
        """Why workers cannot be used in this process ('' while they can): set when one
        could not start, so that later compiles do not wait for workers again."""
        self.target: Optional[list] = None
        """The device target ``[backend, arch, warp_size]`` workers started from now on
        compile a tiny kernel for at start-up (``compile_worker.warm_up``); ``None``: none."""
        self.worker_stderr: Any = subprocess.DEVNULL
        """Where workers started from now on write their stderr (``None``: this process's)."""

    @property
    def size(self) -> int:
        """How many workers are running."""
        with self._lock:
            return sum(1 for w in self._workers if w.alive)

    def grow(self, size: int) -> None:
        """Have at least ``size`` live workers: dead ones are dropped, new ones started;
        none is stopped."""
        with self._run_lock, self._lock:
            for worker in [w for w in self._workers if not w.alive]:
                worker.stop(wait=0.0)
                self._workers.remove(worker)
            while len(self._workers) < size:
                self._workers.append(Worker(self.target, self.worker_stderr))

    def run(self, requests: Sequence[dict], workers: int,
            timeout: float = REQUEST_TIMEOUT_S,
            replied: Optional[Callable[[], None]] = None) -> list[dict]:
        """The reply to each request, in order, compiled by at most ``workers`` processes at
        once (the pool grows to ``workers`` first); ``replied()`` is called (from a worker
        thread) as each reply arrives."""
        if workers < 1:
            raise ValueError(f"a compile pool run needs at least one worker, got {workers}")
        with self._run_lock:
            self.grow(workers)
            with self._lock:
                idle: queue.Queue[Worker] = queue.Queue()
                for worker in self._workers:
                    idle.put(worker)

            def one(request: dict) -> dict:
                worker = idle.get()
                try:
                    if self.broken:
                        return {"ok": False, "error": f"no compile workers: {self.broken}"}
                    if not worker.alive:  # died during an earlier request of this batch
                        worker = self._replace(worker)
                    worker.wait_ready(START_TIMEOUT_S)
                    return worker.ask(request, timeout)
                except Exception as exc:  # no worker could be started
                    self.broken = self.broken or f"{type(exc).__name__}: {exc}"
                    return {"ok": False, "error": f"no compile workers: {self.broken}"}
                finally:
                    idle.put(worker)
                    if replied is not None:
                        replied()

            threads = max(1, min(workers, len(requests)))
            with ThreadPoolExecutor(threads, thread_name_prefix="kitsune-compile") as executor:
                return list(executor.map(one, requests))

    def _replace(self, dead: Worker) -> Worker:
        with self._lock:
            fresh = Worker(self.target, self.worker_stderr)
            self._workers[self._workers.index(dead)] = fresh
            return fresh

    def close(self) -> None:
        """Stop every worker."""
        with self._lock:
            workers, self._workers = self._workers, []
        for worker in workers:  # all of them see the end of input at once ...
            worker.close_pipes()
        for worker in workers:  # ... so this waits about as long as the slowest one
            worker.reap(1.0)
