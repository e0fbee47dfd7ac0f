"""The project's own benchmarked models (the core six: three training steps and three
inference calls) and the :class:`Workload` type; :mod:`benchmarks.zoo` adds the broad
suite and :mod:`benchmarks.suite` holds both.

Each :class:`Workload` builds its model from a fixed seed (so every backend starts from the
same weights) and its inputs from a fixed generator (so every backend sees the same data).
Models that need an optional library (torchvision, transformers) say so in ``requires`` and
are skipped with a message when it is missing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from kitsune_backend import models


@dataclasses.dataclass(frozen=True)
class Workload:
    """One model and its inputs; ``kind`` is ``"train"`` (a full Adam step) or ``"infer"``."""

    name: str
    kind: str
    description: str
    make_model: Callable[[], nn.Module]
    make_inputs: Callable[[torch.Generator], tuple]
    requires: tuple[str, ...] = ()
    quick_skip: str = ""
    """Why ``--quick`` (CPU smoke) mode skips this workload; empty: it runs."""
    group: str = "core"
    """``"core"`` (the project's own six) or ``"broad"`` (:mod:`benchmarks.zoo`)."""
    check_rules: tuple[tuple[str, tuple], ...] = ()
    """Comparison rules that replace :data:`benchmarks.checks.RULES` for this workload."""

    def missing(self) -> Optional[str]:
        """The first required module that is not installed, or ``None``."""
        for module in self.requires:
            if importlib.util.find_spec(module) is None:
                return module
        return None

    def build(self, device: torch.device, batches: int = 1, seed: int = 0
              ) -> tuple[nn.Module, list[tuple]]:
        """The model (seeded weights, train/eval mode set) and ``batches`` different input
        tuples, all on ``device``. Every backend gets the same ones."""
        torch.manual_seed(seed)
        model = self.make_model().to(device)
        model.train(self.kind == "train")
        generator = torch.Generator().manual_seed(seed + 1)
        inputs = [tuple(t.to(device) for t in self.make_inputs(generator))
                  for _ in range(batches)]
        return model, inputs


class WithLoss(nn.Module):
    """``model`` followed by cross-entropy: the compiled part of a training step."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of ``model(x)`` against integer ``target``."""
        return F.cross_entropy(self.model(x), target)


class GPT2Logits(nn.Module):
    """GPT-2 small (12 layers) from its config, random weights; returns the logits."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        self.gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=768, n_head=12))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, tokens) token ids -> (batch, tokens, vocab) logits, no KV cache."""
        return self.gpt2(input_ids=input_ids, use_cache=False).logits


def _googlenet() -> nn.Module:
    import torchvision

    return torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)


def images(batch: int, channels: int, size: int, classes: int = 10, labels: bool = True):
    """Inputs of an image classifier: a batch of images (and integer labels)."""

    def make(generator: torch.Generator) -> tuple:
        x = torch.randn(batch, channels, size, size, generator=generator)
        if not labels:
            return (x,)
        return x, torch.randint(0, classes, (batch,), generator=generator)

    return make


def _tensor(*shape: int):
    def make(generator: torch.Generator) -> tuple:
        return (torch.randn(*shape, generator=generator),)

    return make


def tokens(batch: int, length: int, vocab: int = 50257, with_target: bool = False):
    """Inputs of a token model: ids (and, for training rows, a dummy target)."""

    def make(generator: torch.Generator) -> tuple:
        ids = torch.randint(0, vocab, (batch, length), generator=generator)
        return (ids, torch.zeros(batch)) if with_target else (ids,)

    return make


WORKLOADS: tuple[Workload, ...] = (
    Workload("mlp", "train", "MLP 784-256-128-10, batch 64, Adam step",
             lambda: WithLoss(models.MLP()), images(64, 1, 28)),
    Workload("lenet5", "train", "LeNet-5, batch 64 x 1x28x28, Adam step",
             lambda: WithLoss(models.LeNet5()), images(64, 1, 28)),
    Workload("resnet18", "train", "ResNet-18, batch 64 x 3x32x32, Adam step",
             lambda: WithLoss(models.ResNet18()), images(64, 3, 32),
             quick_skip="too slow for the CPU smoke run (minutes per compiled step)"),
    Workload("branchy", "infer", "8 parallel Linear-GELU-LayerNorm-Linear heads on (32, 512)",
             models.BranchyHeads, _tensor(32, 512)),
    Workload("googlenet", "infer", "GoogLeNet (torchvision), batch 1 x 3x224x224",
             _googlenet, _tensor(1, 3, 224, 224), requires=("torchvision",),
             quick_skip="too slow for the CPU smoke run"),
    Workload("gpt2", "infer", "GPT-2 small (12 layers, random weights), batch 1 x 128 tokens",
             GPT2Logits, tokens(1, 128), requires=("transformers",),
             quick_skip="too slow for the CPU smoke run"),
)

BY_NAME = {w.name: w for w in WORKLOADS}
