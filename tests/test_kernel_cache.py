"""The on-disk kernel cache: one file per source, reused across processes, never corrupt."""

from __future__ import annotations

import os

import torch

import kitsune_backend
from kitsune_backend.codegen import cache
from tests.helpers import rand

SOURCE = '''import triton
import triton.language as tl


@triton.jit
def kitsune_test_copy(in0, out0):
    i = tl.arange(0, 8)
    tl.store(out0 + i, tl.load(in0 + i) * 2)
'''


def _fresh_process(monkeypatch):
    """Forget what this process imported, as a second process would."""
    monkeypatch.setattr(cache, "_LOADED", {})


def _run(module):
    x = rand(8)
    y = torch.empty(8)
    module.kitsune_test_copy[(1,)](x, y)
    torch.testing.assert_close(y, x * 2)


def test_same_source_loads_once(tmp_path, monkeypatch):
    _fresh_process(monkeypatch)
    first = cache.load(SOURCE, str(tmp_path))
    assert cache.load(SOURCE, str(tmp_path)) is first
    files = sorted(os.listdir(cache.source_dir(str(tmp_path))))
    digest = cache.source_hash(SOURCE)
    assert files == [f"{digest}.py", f"{digest}.sha256"]
    _run(first)


def test_second_process_reuses_the_entry(tmp_path, monkeypatch):
    _fresh_process(monkeypatch)
    cache.load(SOURCE, str(tmp_path))
    path = os.path.join(cache.source_dir(str(tmp_path)), cache.source_hash(SOURCE) + ".py")
    stamp = os.stat(path).st_mtime_ns
    _fresh_process(monkeypatch)
    _run(cache.load(SOURCE, str(tmp_path)))
    assert os.stat(path).st_mtime_ns == stamp


def test_corrupt_entry_is_rebuilt_not_used(tmp_path, monkeypatch):
    _fresh_process(monkeypatch)
    cache.load(SOURCE, str(tmp_path))
    path = os.path.join(cache.source_dir(str(tmp_path)), cache.source_hash(SOURCE) + ".py")
    with open(path, "w") as f:
        f.write("raise RuntimeError('corrupt entry was imported')\n")
    _fresh_process(monkeypatch)
    _run(cache.load(SOURCE, str(tmp_path)))
    with open(path) as f:
        assert f.read() == SOURCE


def test_missing_checksum_is_rebuilt(tmp_path, monkeypatch):
    _fresh_process(monkeypatch)
    cache.load(SOURCE, str(tmp_path))
    base = os.path.join(cache.source_dir(str(tmp_path)), cache.source_hash(SOURCE))
    os.remove(base + ".sha256")
    _fresh_process(monkeypatch)
    _run(cache.load(SOURCE, str(tmp_path)))
    assert os.path.exists(base + ".sha256")


def test_triton_cache_goes_under_kitsune_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    cache.use_triton_cache_under(str(tmp_path))
    assert os.environ["TRITON_CACHE_DIR"] == os.path.join(str(tmp_path), "triton")


def test_compile_uses_configured_cache_dir(tmp_path):
    fn = torch.compile(lambda x: torch.relu(x * 2) + 1, backend="kitsune",
                       options={"strict": True, "kernel_cache_dir": str(tmp_path)})
    fn(rand(4, 4))
    record = kitsune_backend.last_compile().forward
    digest = cache.source_hash(record.kernels[0].source)
    assert os.path.exists(os.path.join(cache.source_dir(str(tmp_path)), digest + ".py"))
