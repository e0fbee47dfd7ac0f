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


def _run(module):
    x = rand(8)
    y = torch.empty(8)
    module.kitsune_test_copy[(1,)](x, y)
    torch.testing.assert_close(y, x * 2)


def test_same_source_loads_once(tmp_path, monkeypatch):
    kernels = cache.KernelCache()  # what one process imported
    first = kernels.load(SOURCE, str(tmp_path))
    assert kernels.load(SOURCE, str(tmp_path)) is first
    files = sorted(os.listdir(cache.source_dir(str(tmp_path))))
    digest = cache.source_hash(SOURCE)
    assert files == [f"{digest}.py", f"{digest}.sha256"]
    _run(first)


def test_each_cache_folder_gets_its_own_entry(tmp_path):
    """One process, two ``kernel_cache_dir``s: the source is written under each."""
    kernels = cache.KernelCache()
    for name in ("a", "b"):
        _run(kernels.load(SOURCE, str(tmp_path / name)))
        files = os.listdir(cache.source_dir(str(tmp_path / name)))
        assert f"{cache.source_hash(SOURCE)}.py" in files
    assert kernels.load(SOURCE, str(tmp_path / "a")) is not kernels.load(SOURCE, str(tmp_path / "b"))


def test_second_process_reuses_the_entry(tmp_path, monkeypatch):
    kernels = cache.KernelCache()  # what one process imported
    kernels.load(SOURCE, str(tmp_path))
    path = os.path.join(cache.source_dir(str(tmp_path)), cache.source_hash(SOURCE) + ".py")
    stamp = os.stat(path).st_mtime_ns
    kernels = cache.KernelCache()  # what one process imported
    _run(kernels.load(SOURCE, str(tmp_path)))
    assert os.stat(path).st_mtime_ns == stamp


def test_corrupt_entry_is_rebuilt_not_used(tmp_path, monkeypatch):
    kernels = cache.KernelCache()  # what one process imported
    kernels.load(SOURCE, str(tmp_path))
    path = os.path.join(cache.source_dir(str(tmp_path)), cache.source_hash(SOURCE) + ".py")
    with open(path, "w") as f:
        f.write("raise RuntimeError('corrupt entry was imported')\n")
    kernels = cache.KernelCache()  # what one process imported
    _run(kernels.load(SOURCE, str(tmp_path)))
    with open(path) as f:
        assert f.read() == SOURCE


def test_missing_checksum_is_rebuilt(tmp_path, monkeypatch):
    kernels = cache.KernelCache()  # what one process imported
    kernels.load(SOURCE, str(tmp_path))
    base = os.path.join(cache.source_dir(str(tmp_path)), cache.source_hash(SOURCE))
    os.remove(base + ".sha256")
    kernels = cache.KernelCache()  # what one process imported
    _run(kernels.load(SOURCE, str(tmp_path)))
    assert os.path.exists(base + ".sha256")


def test_triton_binaries_go_under_each_compiles_cache_dir(tmp_path, monkeypatch):
    from triton import knobs

    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    before = knobs.cache.dir
    for folder in (tmp_path / "a", tmp_path / "b"):  # the first cache dir does not stick
        with cache.triton_binaries_under(str(folder)):
            assert knobs.cache.dir == str(folder / "triton")
        assert knobs.cache.dir == before
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "users"))  # the user's choice wins
    with cache.triton_binaries_under(str(tmp_path / "a")):
        assert knobs.cache.dir == str(tmp_path / "users")


def test_compile_uses_configured_cache_dir(tmp_path):
    fn = torch.compile(lambda x: torch.relu(x * 2) + 1, backend="kitsune",
                       options={"strict": True, "kernel_cache_dir": str(tmp_path)})
    fn(rand(4, 4))
    record = kitsune_backend.last_compile().forward
    digest = cache.source_hash(record.kernels[0].source)
    assert os.path.exists(os.path.join(cache.source_dir(str(tmp_path)), digest + ".py"))
