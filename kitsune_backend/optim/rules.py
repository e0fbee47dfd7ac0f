"""The update rules of the optimizers kitsune compiles, written over flat tensors.

Each rule is torch.optim's single-tensor update (``torch/optim/adam.py``, ``sgd.py``) as one
function of whole flat buffers, for steps after the state exists (torch.optim's own first
steps create it): the parameters, their gradients and the optimizer's state
for every parameter of a bucket, laid end to end. Hyperparameters are Python floats (a
change compiles the update again); the learning rate and the step count are 0-d tensors on
the parameters' device, so an LR scheduler changes neither the graph nor a captured replay.

:func:`rule_for` reads a param group of a supported optimizer and returns its rule, or the
reason the group cannot be compiled.
"""

from __future__ import annotations

import dataclasses
from typing import Union

import torch

SUPPORTED = ("Adam", "AdamW", "SGD")
"""The ``torch.optim`` classes whose update kitsune compiles (exactly these classes)."""
UNKNOWN_OPTIMIZER = ("is not one of the optimizers kitsune compiles "
                     f"(torch.optim {', '.join(SUPPORTED)})")
"""How the reason for an optimizer kitsune does not know ends."""


@dataclasses.dataclass(frozen=True)
class AdamRule:
    """Adam and AdamW (``decoupled``): torch.optim's non-capturable single-tensor update."""

    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    amsgrad: bool
    maximize: bool
    decoupled: bool

    counts_steps = True
    """Whether torch.optim keeps ``state[p]["step"]`` for this rule."""

    @property
    def state_keys(self) -> tuple[str, ...]:
        """The per-parameter state tensors, as torch.optim names them."""
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad else ())

    def apply(self, param: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor],
              lr: torch.Tensor, step: torch.Tensor) -> None:
        """Advance ``step`` and update ``param`` and ``state`` in place. torch.optim's
        ``lerp_``/``addcmul_`` are written as the arithmetic they compute, which fuses."""
        step.add_(1)
        grad = -grad if self.maximize else grad
        if self.weight_decay != 0 and self.decoupled:
            param.mul_(1 - lr * self.weight_decay)
        elif self.weight_decay != 0:
            grad = grad + self.weight_decay * param
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.add_((1 - self.beta1) * (grad - exp_avg))  # lerp_, for a weight below 0.5
        exp_avg_sq.mul_(self.beta2).add_((1 - self.beta2) * grad * grad)
        bias_correction1 = 1 - torch.pow(self.beta1, step)
        bias_correction2_sqrt = (1 - torch.pow(self.beta2, step)).sqrt()
        second = exp_avg_sq
        if self.amsgrad:
            torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            second = state["max_exp_avg_sq"]
        denom = second.sqrt() / bias_correction2_sqrt + self.eps
        param.sub_((lr / bias_correction1) * (exp_avg / denom))


@dataclasses.dataclass(frozen=True)
class SGDRule:
    """SGD with momentum, dampening, Nesterov and weight decay: torch.optim's update."""

    momentum: float
    dampening: float
    weight_decay: float
    nesterov: bool
    maximize: bool

    counts_steps = False
    """Whether torch.optim keeps ``state[p]["step"]`` for this rule."""

    @property
    def state_keys(self) -> tuple[str, ...]:
        """The per-parameter state tensors, as torch.optim names them."""
        return ("momentum_buffer",) if self.momentum != 0 else ()

    def apply(self, param: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor],
              lr: torch.Tensor, step: torch.Tensor) -> None:
        """Update ``param`` (and the momentum buffer, which torch.optim's first step made)
        in place; ``step`` is unused (torch.optim's SGD keeps no count)."""
        grad = -grad if self.maximize else grad
        if self.weight_decay != 0:
            grad = grad + self.weight_decay * param
        if self.momentum != 0:
            buf = state["momentum_buffer"]
            buf.mul_(self.momentum).add_(grad, alpha=1 - self.dampening)
            grad = grad + self.momentum * buf if self.nesterov else buf
        param.sub_(lr * grad)


Rule = Union[AdamRule, SGDRule]


def rule_for(optimizer: torch.optim.Optimizer, group: dict) -> Union[Rule, str]:
    """The rule for ``group`` of ``optimizer``, or why kitsune leaves it to torch.optim."""
    kind = type(optimizer)
    if kind.__module__.split(".")[:2] != ["torch", "optim"] or kind.__name__ not in SUPPORTED:
        return f"{kind.__qualname__} {UNKNOWN_OPTIMIZER}"
    if group.get("differentiable"):
        return "differentiable=True: the update must stay on autograd's tape"
    for name in ("betas", "weight_decay", "momentum", "dampening", "eps"):
        value = group.get(name)
        if isinstance(value, torch.Tensor) or (
                isinstance(value, tuple) and any(isinstance(v, torch.Tensor) for v in value)):
            return f"{name} is a tensor: kitsune compiles float hyperparameters"
    if kind.__name__ == "SGD":
        return SGDRule(float(group["momentum"]), float(group["dampening"]),
                       float(group["weight_decay"]), bool(group["nesterov"]),
                       bool(group.get("maximize", False)))
    beta1, beta2 = group["betas"]
    decoupled = kind.__name__ == "AdamW" or bool(group.get("decoupled_weight_decay", False))
    return AdamRule(float(beta1), float(beta2), float(group["eps"]),
                    float(group["weight_decay"]), bool(group.get("amsgrad", False)),
                    bool(group.get("maximize", False)), decoupled)
