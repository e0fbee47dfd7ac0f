"""Buckets: the parameters of one param group, one device and one dtype, laid end to end.

A bucket owns a flat buffer for the parameters, one for their gradients and one per state
tensor of the rule (``exp_avg``, ``momentum_buffer``, ...). Each parameter's ``.data``
becomes a view of its stretch of the flat parameter buffer, with the parameter's own strides
(a channels-last weight stays channels-last), and the optimizer's state entries become views
of the flat state buffers, so ``state_dict()`` and torch.optim see what they always see.
The whole bucket then updates as one elementwise program over flat tensors: one compiled
update for every parameter of the bucket, however many there are.

All parameters of a bucket share one step count: for a rule that counts steps,
``state[p]["step"]`` is the same 0-d tensor (on the parameters' device) for each of them.
A bucket is made only from parameters whose state torch.optim has already created.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from .rules import Rule


class FlatUpdate(torch.nn.Module):
    """One bucket's update as a module whose buffers are the flat tensors (what kitsune
    compiles: the buffers are static inputs the compiled graph updates in place).

    With ``scaling`` (two 0-d float32 tensors: the gradients' loss scale and GradScaler's
    ``found_inf``), the update divides the gradients by the scale and leaves parameters,
    state and step count as they were where ``found_inf`` is non-zero: torch.optim's fused
    Adam's contract with ``torch.amp.GradScaler``, decided on the device."""

    def __init__(self, rule: Rule, param: torch.Tensor, grad: torch.Tensor,
                 state: dict[str, torch.Tensor], lr: torch.Tensor, step: torch.Tensor,
                 scaling: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> None:
        super().__init__()
        self.rule = rule
        self.keys = tuple(state)
        self.register_buffer("param", param)
        self.register_buffer("grad", grad)
        for key, value in state.items():
            self.register_buffer(f"state_{key}", value)
        self.register_buffer("lr", lr)
        self.register_buffer("step", step)
        self.scaled = scaling is not None
        if scaling is not None:
            self.register_buffer("grad_scale", scaling[0])
            self.register_buffer("found_inf", scaling[1])

    def forward(self) -> None:
        """Apply the rule to the flat buffers, in place."""
        state = {key: getattr(self, f"state_{key}") for key in self.keys}
        if not self.scaled:
            self.rule.apply(self.param, self.grad, state, self.lr, self.step)
            return
        updated = [self.param, self.step, *state.values()]
        before = [t.clone() for t in updated]
        self.rule.apply(self.param, self.grad / self.grad_scale, state, self.lr, self.step)
        skip = self.found_inf != 0
        for now, old in zip(updated, before):
            now.copy_(torch.where(skip, old, now))


def is_dense(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` covers exactly ``numel`` consecutive elements in some dim order
    (contiguous, channels-last, any permutation): then it fits a stretch of a flat buffer."""
    expected = 1
    for size, stride in sorted(zip(tensor.shape, tensor.stride()), key=lambda d: d[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


class Bucket:
    """Flat buffers for ``params`` (one group, device and dtype, one step count) and the
    compiled update over them (``compile_update`` makes it from a :class:`FlatUpdate`)."""

    def __init__(self, params: list[torch.nn.Parameter], state: dict, rule: Rule,
                 compile_update: Callable[[torch.nn.Module], Callable[[], Any]]) -> None:
        first = params[0]
        self.params = params
        self.rule = rule
        self.offsets = _offsets(params)
        total = self.offsets[-1]
        device, dtype = first.device, first.dtype
        self.flat_param = torch.empty(total, device=device, dtype=dtype)
        self.flat_grad = torch.zeros(total, device=device, dtype=dtype)
        self.flat_state = {k: torch.zeros(total, device=device, dtype=dtype)
                           for k in rule.state_keys}
        self.step = torch.tensor(_step_of(state, first), dtype=torch.float32, device=device)
        self.lr = torch.zeros((), dtype=torch.float32, device=device)
        self.last_lr: Optional[float] = None
        for i, p in enumerate(params):
            view = self._view(self.flat_param, i)
            view.copy_(p.data)
            p.data = view
            entry = state.setdefault(p, {})
            for key, flat in self.flat_state.items():
                stretch = self._view(flat, i)
                stretch.copy_(entry[key])
                entry[key] = stretch
            if rule.counts_steps:
                entry["step"] = self.step
        self.compile_update = compile_update
        self.update = compile_update(FlatUpdate(rule, self.flat_param, self.flat_grad,
                                                self.flat_state, self.lr, self.step))
        self.scaling: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self.scaled_update: Optional[Callable[[], Any]] = None  # made at the first use

    def _view(self, flat: torch.Tensor, index: int) -> torch.Tensor:
        p = self.params[index]
        return torch.as_strided(flat, p.shape, p.stride(), self.offsets[index])

    def holds_gradients(self) -> bool:
        """Whether every parameter's gradient is already its stretch of the flat buffer."""
        return all(p.grad is not None and p.grad.data_ptr() == self._view(self.flat_grad, i)
                   .data_ptr() and p.grad.stride() == p.stride()
                   for i, p in enumerate(self.params))

    def gather_gradients(self) -> None:
        """Copy the gradients into the flat buffer (unless they live there already), and
        make each ``p.grad`` its stretch of it."""
        if self.holds_gradients():
            return
        views = [self._view(self.flat_grad, i) for i in range(len(self.params))]
        torch._foreach_copy_(views, [p.grad for p in self.params])
        for p, view in zip(self.params, views):
            p.grad = view

    def run(self, lr: Any, capturing: bool = False,
            scaling: Optional[tuple[Optional[torch.Tensor], torch.Tensor]] = None) -> None:
        """One step: the gradients gathered, ``lr`` set on the device, the update run.

        ``capturing``: the step is being captured into a CUDA graph. A float ``lr`` is then
        not set (a fill would replay the value seen at capture): whoever replays the graph
        calls :meth:`set_lr` before each replay. A tensor ``lr`` is copied in the graph.
        ``scaling``: GradScaler's ``(grad_scale, found_inf)`` for this step (``grad_scale``
        None when the gradients were unscaled already); the scaled update runs."""
        self.gather_gradients()
        if isinstance(lr, torch.Tensor):
            self.lr.copy_(lr)
            self.last_lr = None
        elif not capturing:
            self.set_lr(lr)
        if scaling is None:
            self.update()
            return
        grad_scale, found_inf = self._scaled_update()
        if scaling[0] is None:
            grad_scale.fill_(1.0)
        else:
            grad_scale.copy_(scaling[0])
        found_inf.copy_(scaling[1])
        self.scaled_update()

    def _scaled_update(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The scaled update's scale and ``found_inf`` tensors (compiled at the first use)."""
        if self.scaling is None:
            device = self.flat_param.device
            self.scaling = (torch.ones((), device=device), torch.zeros((), device=device))
            self.scaled_update = self.compile_update(FlatUpdate(
                self.rule, self.flat_param, self.flat_grad, self.flat_state, self.lr,
                self.step, self.scaling))
        return self.scaling

    def set_lr(self, lr: Any) -> None:
        """Set a float learning rate on the device (nothing runs when it did not change)."""
        if not isinstance(lr, torch.Tensor) and lr != self.last_lr:
            self.lr.fill_(lr)
            self.last_lr = lr

    def zero_gradients(self) -> bool:
        """Zero the gradients in one fill if they all live in the flat buffer (returns
        whether it did)."""
        if not self.holds_gradients():
            return False
        self.flat_grad.zero_()
        return True


def _offsets(params: list[torch.Tensor]) -> list[int]:
    offsets = [0]
    for p in params:
        offsets.append(offsets[-1] + p.numel())
    return offsets


def _step_of(state: dict, param: torch.Tensor) -> float:
    step = state.get(param, {}).get("step", 0.0)
    return float(step.item() if isinstance(step, torch.Tensor) else step)
