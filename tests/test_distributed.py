"""kitsune under DistributedDataParallel and FSDP2, on the CPU: two gloo processes started
by ``torch.distributed.run`` (torchrun) train the quick MLP of ``benchmarks.distributed``
with each engine, eager and kitsune; the losses must be eager's."""

import json
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(engine, backend, tmp_path):
    out = tmp_path / f"{engine}-{backend}.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-port", str(_free_port()), "-m", "benchmarks.distributed",
               "--engine", engine, "--backend", backend, "--device", "cpu", "--quick",
               "--steps", "5", "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": ROOT, "TRITON_INTERPRET": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("engine", ["ddp", "fsdp2"])
def test_kitsune_trains_under_the_engine_with_eager_losses(engine, tmp_path):
    """DDP: Dynamo's DDP optimizer splits the graph at bucket boundaries, so kitsune
    compiles several forward and backward graphs; FSDP2: each sharded block is compiled."""
    eager = _train(engine, "eager", tmp_path)
    kitsune = _train(engine, "kitsune", tmp_path)
    assert kitsune["world_size"] == 2 and kitsune["graphs"] >= 4, kitsune
    assert kitsune["losses"] == pytest.approx(eager["losses"], rel=1e-5, abs=1e-6)
