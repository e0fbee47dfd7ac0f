"""Training steps under DistributedDataParallel or FSDP2, one backend, run by ``torchrun``.

::

    torchrun --nproc-per-node 1 -m benchmarks.distributed --engine ddp --backend kitsune
    torchrun --nproc-per-node 2 -m benchmarks.distributed --engine fsdp2 --device cpu --quick

Each rank trains the model (torchvision ResNet-18 on CIFAR-sized b64 images, or with
``--quick`` a 4-layer MLP of 512 wide, which needs nothing installed) with SGD and momentum
for ``--steps`` steps and reports ms per step, the median of steps 4 to the last (the
first ones compile). Engines:

- ``ddp``: ``DDP(torch.compile(model), bucket_cap_mb=4)``: Dynamo's DDP optimizer splits
  each graph at the bucket boundaries, so the backend compiles many small graphs;
- ``fsdp2``: every child module with parameters compiled, then ``fully_shard`` on it, then
  on the model (the per-block recipe: compiling the sharded model whole, Dynamo breaks the
  graph at FSDP's hooks and compiles nothing on torch 2.13, seen on the CPU).

NCCL on CUDA, gloo on the CPU. Rank 0 prints one line and, with ``--json``, writes the
losses, the step times and (kitsune) the graphs compiled and their CUDA graph captures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

BACKENDS = ("eager", "inductor", "kitsune")


def parse(argv: Any = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distributed",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("ddp", "fsdp2"), default="ddp")
    parser.add_argument("--backend", choices=BACKENDS, default="kitsune")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="the MLP, not ResNet-18")
    parser.add_argument("--json", dest="json_path", help="rank 0 writes its results here")
    return parser.parse_args(argv)


def build_model(quick: bool) -> Any:
    """The model and a function making one batch (inputs, targets) from a generator."""
    import torch

    if quick:
        sizes = (64, 512, 512, 512, 10)
        layers = []
        for a, b in zip(sizes, sizes[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        model = torch.nn.Sequential(*layers[:-1])
        return model, lambda g, dev: (torch.randn(16, 64, generator=g).to(dev),
                                      torch.randint(0, 10, (16,), generator=g).to(dev))
    import torchvision

    model = torchvision.models.resnet18(num_classes=10)
    return model, lambda g, dev: (torch.randn(64, 3, 32, 32, generator=g).to(dev),
                                  torch.randint(0, 10, (64,), generator=g).to(dev))


def wrap(model: Any, engine: str, backend: str, device: Any) -> Any:
    """The model under the engine, compiled by the backend (eager: not compiled)."""
    import torch

    import kitsune_backend

    def compiled(m: Any) -> Any:
        if backend == "eager":
            return m
        return torch.compile(m, backend=kitsune_backend.kitsune if backend == "kitsune"
                             else "inductor")

    if engine == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        return DDP(compiled(model), device_ids=ids, bucket_cap_mb=4)
    from torch.distributed.fsdp import fully_shard

    for name, child in list(model.named_children()):
        if any(True for _ in child.parameters()):
            model.register_module(name, fully_shard(compiled(child)))
    return fully_shard(model)


def main(argv: Any = None) -> int:
    args = parse(argv)
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch
    import torch.distributed as dist

    import kitsune_backend

    device_type = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rank = int(os.environ.get("RANK", 0))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(device_type, local) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        result = train(args, device, rank)
        dist.barrier()  # no rank tears its group down while another still talks to it
    finally:
        dist.destroy_process_group()
    if rank == 0:
        records = [r for s in kitsune_backend.history() for r in s.records]
        result.update(graphs=len(records), captures=sum(
            r.runtime_info.get("cuda_graph_captures", 0) for r in records))
        print(f"{args.engine} {args.backend} on {device.type} x{result['world_size']}: "
              f"{result['ms_per_step']:.2f} ms/step (median of steps 4-{args.steps}), "
              f"{result['graphs']} kitsune graph(s)")
        if args.json_path:
            with open(args.json_path, "w") as f:
                json.dump(result, f, indent=1)
    return 0


def train(args: argparse.Namespace, device: Any, rank: int) -> dict:
    """Train ``args.steps`` steps; the losses and per-step milliseconds of this rank."""
    import torch
    import torch.distributed as dist

    torch.manual_seed(0)
    model, batch = build_model(args.quick)
    model = model.to(device)
    step_model = wrap(model, args.engine, args.backend, device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(rank)
    losses, times = [], []
    for _ in range(args.steps):
        x, y = batch(generator, device)
        began = time.perf_counter()
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(step_model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())  # synchronizes
        times.append((time.perf_counter() - began) * 1e3)
    return {"engine": args.engine, "backend": args.backend, "device": device.type,
            "world_size": dist.get_world_size(), "losses": losses, "step_ms": times,
            "ms_per_step": statistics.median(times[3:] or times)}


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Leave without the interpreter's teardown: with gloo, a rank sometimes aborts there
    # ("terminate called without an active exception", seen with FSDP2 on torch 2.13's CPU
    # build) after its work is done and reported.
    os._exit(code)
