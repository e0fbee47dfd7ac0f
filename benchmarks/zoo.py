"""The broad suite: common architectures a user base would bring, random weights.

torchvision classifiers, timm models and HuggingFace encoders, decoders and an
encoder-decoder (built from configs: nothing is downloaded), each at batch 1 and at a
throughput batch where the regime changes, for inference and for training (forward, loss,
backward, Adam step). They need torchvision, timm or transformers (the GPU machine has all
three); a missing library skips its rows with the reason. ``--quick`` (the CPU smoke run)
skips them all: even one compiled step of these takes minutes under the Triton interpreter.

Training rows switch dropout and stochastic depth off (:func:`without_randomness`): every
row is checked against eager before it is timed, and random masks drawn by two backends
never agree; the ``-dropout`` rows (BERT, GPT-2) keep it, with looser checks
(:data:`DROPOUT_RULES`). Their first-step gradients are compared at 3% relative L2
(:data:`TRAIN_RULES`), not the core's 1%: BatchNorm over small batches amplifies reordered
sums (MobileNetV2 b8 on the H200, TF32 off: Inductor reduce-overhead 1.46% from eager,
kitsune 1.03%).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from .workloads import WithLoss, Workload, images, tokens

QUICK_SKIP = "broad-suite model: minutes per compiled step on the CPU smoke run"
TRAIN_RULES = (("step1_grads", ("relative_l2", 3e-2)),)
DROPOUT_RULES = (("step1_loss", ("elementwise", 5e-2, 1e-3)),
                 ("step1_grads", ("relative_l2", 0.9)),
                 ("later_losses", ("elementwise", 5e-2, 1e-3)))
"""The ``-dropout`` rows keep the configs' dropout (0.1): two backends draw different masks,
so only what the randomness leaves comparable is checked: losses within 5% (a mean over
every token and feature) and gradients finite and near eager's (relative L2 under 0.9:
missing or zero gradients give 1, exploding or stale ones more). The 0.9 is a bound chosen
before any GPU run: masks that differ in 10% of their elements each should move the
gradients far less."""


def _torchvision(name: str, **kwargs) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, **kwargs)

    return make


def _timm(name: str) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False)

    return make


class HFLastHidden(nn.Module):
    """A HuggingFace encoder or decoder from a config (random weights): token ids in, its
    last hidden state (or logits) out, as a plain tensor."""

    def __init__(self, family: str) -> None:
        super().__init__()
        import transformers as tf

        if family == "bert":
            self.net = tf.BertModel(tf.BertConfig())
        elif family == "roberta":
            self.net = tf.RobertaModel(tf.RobertaConfig())
        elif family == "gpt2-lm":
            self.net = tf.GPT2LMHeadModel(tf.GPT2Config())
        elif family == "t5":
            self.net = tf.T5Model(tf.T5Config(d_model=512, d_ff=2048, num_layers=6,
                                              num_decoder_layers=6, num_heads=8))
        else:
            raise ValueError(f"unknown family {family!r}")
        self.family = family

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, tokens) ids -> the model's main output tensor."""
        if self.family == "t5":
            out = self.net(input_ids=input_ids, decoder_input_ids=input_ids, use_cache=False)
            return out.last_hidden_state
        if self.family == "gpt2-lm":
            return self.net(input_ids=input_ids, use_cache=False).logits
        return self.net(input_ids=input_ids).last_hidden_state


class TokenLoss(nn.Module):
    """A token model's output reduced to a scalar loss (mean square), for training rows."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean squared output (``target`` only fixes the input signature)."""
        return self.model(input_ids).float().pow(2).mean()


def without_randomness(model: nn.Module) -> nn.Module:
    """``model`` with every dropout and stochastic-depth probability set to 0 (torch's
    dropout modules, torchvision's ``StochasticDepth``, timm's ``DropPath``)."""
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) or type(module).__name__ == \
                "StochasticDepth":
            module.p = 0.0
        elif type(module).__name__ == "DropPath":
            module.drop_prob = 0.0
    return model


def _hf(family: str) -> Callable[[], nn.Module]:
    return lambda: HFLastHidden(family)


def _vision(name: str, make: Callable[[], nn.Module], requires: str, batches: dict[str, int],
            size: int = 224) -> list[Workload]:
    """Inference rows (``infer``: batch 1 and a throughput batch) and a training row."""
    rows = []
    for kind_batch, batch in batches.items():
        kind = "train" if kind_batch.startswith("train") else "infer"
        model = (lambda m=make: WithLoss(without_randomness(m()))) if kind == "train" else make
        rows.append(Workload(
            f"{name}-{kind}-b{batch}", kind,
            f"{name}, batch {batch} x 3x{size}x{size}"
            + (", Adam step" if kind == "train" else ""),
            model, images(batch, 3, size, classes=1000, labels=kind == "train"),
            requires=(requires,), quick_skip=QUICK_SKIP, group="broad",
            check_rules=TRAIN_RULES if kind == "train" else ()))
    return rows


def _text(name: str, family: str, batches: dict[str, int], seq: int = 128,
          vocab: int = 30522) -> list[Workload]:
    rows = []
    for kind_batch, batch in batches.items():
        kind = "train" if kind_batch.startswith("train") else "infer"
        model = ((lambda f=family: TokenLoss(without_randomness(HFLastHidden(f))))
                 if kind == "train" else _hf(family))
        make_inputs = tokens(batch, seq, vocab, with_target=kind == "train")
        rows.append(Workload(
            f"{name}-{kind}-b{batch}", kind,
            f"{name} (HuggingFace config, random weights), batch {batch} x {seq} tokens"
            + (", Adam step" if kind == "train" else ""),
            model, make_inputs, requires=("transformers",), quick_skip=QUICK_SKIP,
            group="broad", check_rules=TRAIN_RULES if kind == "train" else ()))
    return rows


def _text_with_dropout(name: str, family: str, batch: int, vocab: int,
                       seq: int = 128) -> Workload:
    """A training row of a HuggingFace model with its config's dropout left on."""
    return Workload(
        f"{name}-dropout-train-b{batch}", "train",
        f"{name} (HuggingFace config, dropout 0.1 kept), batch {batch} x {seq} tokens, "
        "Adam step", lambda f=family: TokenLoss(HFLastHidden(f)),
        tokens(batch, seq, vocab, with_target=True), requires=("transformers",),
        quick_skip=QUICK_SKIP, group="broad", check_rules=DROPOUT_RULES)


TV = "torchvision"
BROAD: tuple[Workload, ...] = tuple(
    _vision("resnet50", _torchvision("resnet50"), TV,
            {"infer1": 1, "infer": 32, "train": 16})
    + _vision("mobilenet_v2", _torchvision("mobilenet_v2"), TV, {"infer": 1, "train": 8})
    + _vision("mobilenet_v3_small", _torchvision("mobilenet_v3_small"), TV,
              {"infer": 1, "train": 32})
    + _vision("efficientnet_b0", _torchvision("efficientnet_b0"), TV, {"infer": 1, "train": 16})
    + _vision("regnet_y_400mf", _torchvision("regnet_y_400mf"), TV, {"infer": 1, "train": 16})
    + _vision("convnext_tiny", _torchvision("convnext_tiny"), TV, {"infer": 1, "train": 8})
    + _vision("swin_t", _torchvision("swin_t"), TV, {"infer1": 1, "infer": 16})
    + _vision("vit_b_16", _torchvision("vit_b_16"), TV, {"infer": 1})
    + _vision("densenet121", _torchvision("densenet121"), TV, {"infer": 1})
    + _vision("inception_v3", _torchvision("inception_v3", aux_logits=False,
                                           init_weights=True), TV, {"infer": 1}, size=299)
    + _vision("shufflenet_v2", _torchvision("shufflenet_v2_x1_0"), TV,
              {"infer": 1, "train": 32})
    + _vision("squeezenet1_1", _torchvision("squeezenet1_1"), TV, {"infer": 1})
    + _vision("timm_vit_tiny", _timm("vit_tiny_patch16_224"), "timm", {"infer1": 1, "infer": 8})
    + _vision("timm_deit_small", _timm("deit_small_patch16_224"), "timm", {"infer": 8})
    + _vision("timm_convnext_atto", _timm("convnext_atto"), "timm", {"infer": 1, "train": 16})
    + _vision("timm_resnet18d", _timm("resnet18d"), "timm", {"infer": 1})
    + _text("bert", "bert", {"infer1": 1, "infer": 16, "train": 8})
    + _text("roberta", "roberta", {"infer": 1}, vocab=50265)
    + _text("gpt2", "gpt2-lm", {"train": 4}, vocab=50257)
    + _text("t5_small", "t5", {"infer": 1}, vocab=32128)
    + [_text_with_dropout("bert", "bert", 8, vocab=30522),
       _text_with_dropout("gpt2", "gpt2-lm", 8, vocab=50257)]
)
