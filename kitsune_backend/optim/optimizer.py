"""``KitsuneOptimizer``: a torch.optim optimizer whose update runs as kitsune-compiled kernels.

The wrapper holds a real ``torch.optim`` optimizer and shares its ``param_groups`` and
``state`` (the same objects), so ``state_dict()``/``load_state_dict()``, LR schedulers,
``add_param_group`` and gradient clipping work as with the optimizer itself, and a state
dict moves between the two both ways.

What ``step()`` runs:

1. the first :data:`WARMUP_STEPS` steps: torch.optim's own update (it creates the state the
   way it always does; the second step's time is the eager figure ``get_stats`` reports);
2. after that, for each param group, device and dtype, one :class:`~.buckets.Bucket`: the
   parameters and their state laid end to end in flat buffers, and the rule of
   :mod:`~.rules` compiled by kitsune over them (the gradients are copied into the flat
   buffer unless they already live there, the learning rate is set on the device);
3. torch.optim's update again, with the reason recorded, for a step kitsune cannot compile
   (an optimizer it does not know, sparse gradients, state not created yet, ...).

Buckets are rebuilt when the set of parameters with gradients, a hyperparameter other than
the learning rate, or the param groups change (and after ``load_state_dict``).
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Callable, Iterable, Optional

import torch

from ..backend import bound_backend
from ..config import FIELDS, resolve, valid_names
from ..errors import KitsuneConfigError
from ..process import PROCESS
from .buckets import Bucket, is_dense
from .rules import UNKNOWN_OPTIMIZER, Rule, rule_for

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""The ``amp`` option's values: the dtype the forward autocasts to. (fp16 wants loss scaling:
use ``torch.amp.GradScaler`` with the wrapper as with any optimizer; the wrapper unscales
and checks for infs on the device.)"""
WARMUP_STEPS = 2
"""Steps torch.optim runs itself before kitsune's update takes over."""
TIMED_STEPS = 5
"""Compiled steps timed (after the one that compiles) for ``get_stats``."""


class KitsuneOptimizer(torch.optim.Optimizer):
    """``KitsuneOptimizer(torch.optim.Adam, model.parameters(), lr=1e-3, ...)``.

    Keyword arguments that name kitsune options (:class:`~kitsune_backend.config.Config`
    fields, and ``mode``) configure the compiled update; the rest go to the optimizer.
    With ``model=``, the model's forward and backward are compiled with kitsune too (its
    ``forward`` replaced by the compiled one, same options), so an unchanged training loop
    runs both; ``amp="bf16"`` or ``"fp16"`` (with ``model=``) runs that forward under
    autocast.
    """

    _step_supports_amp_scaling = True
    """``torch.amp.GradScaler.step`` then leaves the inf check and the unscaling to
    ``step()`` (it sets ``grad_scale`` and ``found_inf`` on the optimizer): the compiled
    update does both on the device, so a scaled step reads nothing back to the host."""

    def __init__(self, optimizer_class: type, params: Iterable[Any], *,
                 model: Optional[torch.nn.Module] = None, amp: Optional[str] = None,
                 **options: Any) -> None:
        ours = {k: options.pop(k) for k in list(options) if k in FIELDS or k == "mode"}
        self.config = resolve(ours.pop("mode", None), ours)
        self.optimizer = _make(optimizer_class, params, options)
        super().__init__(self.optimizer.param_groups, self.optimizer.defaults)
        self.param_groups = self.optimizer.param_groups  # the same list: groups added later
        self.state = self.optimizer.state  # show up on both sides
        self._buckets: list[tuple[dict, Bucket]] = []
        self._sessions: list[Any] = []  # kitsune's compiles of the buckets' updates
        self._model_sessions: list[Any] = []  # and of the model (with model=)
        self._signature: Any = None
        self._steps = 0
        self._compiled_steps = 0
        self._eager_reason = ""
        self._times: dict[str, list[float]] = {"eager": [], "kitsune": []}
        if amp is not None and (amp not in AMP_DTYPES or model is None):
            raise KitsuneConfigError(
                f"amp={amp!r}: amp is one of {', '.join(AMP_DTYPES)} and needs model= (the "
                "model's forward then runs under autocast)")
        self.amp = amp
        if model is not None:
            _compile_forward(model, self.config, AMP_DTYPES.get(amp), self._model_sessions)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One update of every parameter with a gradient; returns ``closure()``'s loss."""
        self._steps += 1
        scaling = _scaling(self)
        unknown = rule_for(self.optimizer, self.param_groups[0])
        if isinstance(unknown, str) and unknown.endswith(UNKNOWN_OPTIMIZER):
            self._eager_reason = unknown  # its step may need the closure itself (LBFGS)
            return self._torch_step(scaling, closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        reason = self._why_eager()
        timed = self._timing(reason)
        start = _now(self._device) if timed else 0.0
        if reason:
            self._eager_step(reason, scaling)
        else:
            self._compiled_step(scaling)
        if timed:
            self._times[timed].append(_now(self._device) - start)
        return loss

    def _compiled_step(self, scaling: Optional[tuple]) -> None:
        """Every bucket's compiled update; the compiles a first call makes are kept for
        ``get_stats``."""
        first = not self._sessions
        before = PROCESS.history.started
        capturing = _capturing(self._device)
        for group, bucket in self._buckets:
            bucket.run(group["lr"], capturing, scaling)
        if first:
            self._sessions = [s for s in PROCESS.history.sessions() if s.id >= before]
        self._compiled_steps += 1
        self._eager_reason = ""

    def _timing(self, reason: str) -> str:
        """Which figure this step's time goes to: the last warm-up step's ("eager"), the
        first :data:`TIMED_STEPS` compiled steps after the one that compiled ("kitsune")."""
        if _capturing(self._device):
            return ""  # timing synchronizes, which a capture may not
        if self._steps == WARMUP_STEPS:
            return "eager"
        if not reason and self._compiled_steps >= 1 and len(self._times["kitsune"]) < TIMED_STEPS:
            return "kitsune"
        return ""

    def before_replay(self, count: bool = True) -> None:
        """Called by :func:`~kitsune_backend.compile_step` before each replay of a captured
        step holding this optimizer's update: the learning rates of the buckets are set on
        the device (the graph reads them there) and, with ``count``, the step is counted
        (the first replay runs the step counted while it was captured)."""
        if count:
            self._steps += 1
            self._compiled_steps += 1
        for group, bucket in self._buckets:
            bucket.set_lr(group["lr"])

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch.optim's; with ``set_to_none=False`` and gradients in the flat buffers,
        one fill per bucket."""
        if not set_to_none and self._buckets and all(
                bucket.zero_gradients() for _, bucket in self._buckets):
            return
        super().zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state dict, in its format: each parameter has a step count of its
        own, on the CPU unless its group is ``capturable`` or ``fused`` (inside kitsune, a
        bucket's parameters share one count on their device)."""
        packed = super().state_dict()
        on_device = {i for g in packed["param_groups"] if g.get("capturable") or g.get("fused")
                     for i in g["params"]}
        packed["state"] = {
            i: {**entry, "step": entry["step"].detach().clone().to(
                entry["step"].device if i in on_device else "cpu")}
            if isinstance(entry.get("step"), torch.Tensor) else entry
            for i, entry in packed["state"].items()}
        return packed

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch.optim's (the state of a plain torch.optim optimizer loads too); the
        flat buffers are made again from the loaded state at the next compiled step."""
        self.optimizer.load_state_dict(state_dict)
        self.state = self.optimizer.state
        self._signature = None
        self._buckets = []

    def get_stats(self) -> dict[str, Any]:
        """What the wrapper did and what it measured (see the training guide)."""
        eager, ours = self._times["eager"], self._times["kitsune"]
        stats: dict[str, Any] = {
            "steps": self._steps,
            "compiled_steps": self._compiled_steps,
            "update": "torch.optim" if self._eager_reason else "kitsune",
            "eager_reason": self._eager_reason,
            "buckets": len(self._buckets),
            "parameters_compiled": sum(len(b.params) for _, b in self._buckets),
            "eager_update_ms": eager[0] * 1e3 if eager else None,
            "kitsune_update_ms": sorted(ours)[len(ours) // 2] * 1e3 if ours else None,
            "memory_saved": "not measured: the wrapper does not reset the device's peak "
                            "memory counters, which belong to the caller",
        }
        records = [r for session in self._sessions for r in session.records]
        stats["update_graphs"] = len(records)
        stats["update_kernels_per_step"] = sum(r.stats["kernels"] for r in records)
        stats["generated_kernels"] = sum(len(r.kernels) for r in records)
        stats["captured"] = [r.stats.get("capture", "") for r in records]
        if eager and ours:
            stats["update_speedup"] = stats["eager_update_ms"] / stats["kitsune_update_ms"]
        else:
            stats["update_speedup"] = None  # not measured yet: too few steps
        stats["model_memory_plan"] = [
            {"graph": r.name, **{key: r.stats[stat] for key, stat in MEMORY_PLAN_STATS.items()
                                 if stat in r.stats}}
            for session in self._model_sessions for r in session.records]
        return stats

    @property
    def _device(self) -> Optional[torch.device]:
        for group in self.param_groups:
            for p in group["params"]:
                return p.device
        return None

    def _why_eager(self) -> str:
        """Why this step runs torch.optim's update ('' when kitsune's runs), building the
        buckets when what they hold has changed."""
        if self._steps <= WARMUP_STEPS:
            return f"warm-up step {self._steps} of {WARMUP_STEPS}: torch.optim's update"
        plan = []
        for group in self.param_groups:
            rule = rule_for(self.optimizer, group)
            if isinstance(rule, str):
                return rule
            params = [p for p in group["params"] if p.grad is not None]
            problem = _why_not_flat(params, self.state, rule)
            if problem:
                return problem
            plan.append((group, rule, params))
        signature = [(id(g), r, tuple(map(id, ps))) for g, r, ps in plan]
        if signature != self._signature:
            self._buckets = [b for g, r, ps in plan for b in self._bucketize(g, r, ps)]
            self._signature = signature
            self._sessions = []
        return ""

    def _bucketize(self, group: dict, rule: Rule, params: list) -> list[tuple[dict, Bucket]]:
        keys: dict[tuple, list] = {}
        for p in params:
            step = self.state[p].get("step", 0.0)
            step = float(step.item() if isinstance(step, torch.Tensor) else step)
            keys.setdefault((p.device, p.dtype, step), []).append(p)
        return [(group, Bucket(ps, self.state, rule, self._compile)) for ps in keys.values()]

    def _compile(self, module: torch.nn.Module) -> Callable[[], Any]:
        return torch.compile(module, backend=bound_backend(self.config))

    def _eager_step(self, reason: str, scaling: Optional[tuple]) -> None:
        """torch.optim's update, each parameter with a step count of its own again."""
        self._eager_reason = reason
        if self._buckets:
            for entry in self.state.values():
                if isinstance(entry.get("step"), torch.Tensor):
                    entry["step"] = entry["step"].clone()
            self._buckets, self._signature = [], None
        self._torch_step(scaling)

    def _torch_step(self, scaling: Optional[tuple], closure: Optional[Callable] = None) -> Any:
        """torch.optim's update; under GradScaler, skipped when it found an inf or NaN (a
        value read back to the host, as GradScaler does) and run on unscaled gradients."""
        if scaling is not None:
            grad_scale, found_inf = scaling
            if found_inf.item() != 0:
                return None
            if grad_scale is not None:
                grads = [p.grad for g in self.param_groups for p in g["params"]
                         if p.grad is not None]
                torch._foreach_div_(grads, grad_scale)
        return self.optimizer.step(closure)


def _compile_forward(model: torch.nn.Module, config: Any,
                     amp: Optional[torch.dtype], sessions: list) -> None:
    """Replace ``model.forward`` by kitsune's compile of it (under autocast to ``amp``);
    each compile's session goes into ``sessions`` (its backward graph joins it later).
    (``nn.Module.compile`` would leave torch.nn's own modules eager.)"""
    forward = model.forward
    if amp is not None:
        device = next(model.parameters()).device.type
        plain = forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            with torch.autocast(device, dtype=amp):
                return plain(*args, **kwargs)

    backend = bound_backend(config)

    def recorded(gm: Any, example_inputs: Any) -> Any:
        before = PROCESS.history.started
        compiled = backend(gm, example_inputs)
        sessions.extend(s for s in PROCESS.history.sessions() if s.id >= before)
        return compiled

    model.forward = torch.compile(forward, backend=recorded)


MEMORY_PLAN_STATS = {"arena_bytes": "bytes_planned",
                     "single_stream_arena_bytes": "bytes_single_stream",
                     "peak_planned_bytes": "bytes_peak_planned",
                     "eager_peak_estimate_bytes": "bytes_eager_peak"}
"""``get_stats()["model_memory_plan"]`` key -> the memory_plan stage's stat it reports:
the plan made at compile time (the device's real peak is the caller's to measure)."""


def _why_not_flat(params: list, state: dict, rule: Rule) -> str:
    """Why these parameters cannot go into flat buffers this step ('' when they can)."""
    for p in params:
        if p.grad.is_sparse:
            return "sparse gradients: torch.optim's update"
        if p.is_complex() or not p.is_floating_point():
            return f"a {p.dtype} parameter: kitsune compiles real floating-point updates"
        if p.grad.dtype != p.dtype or p.grad.shape != p.shape:
            return "a gradient whose dtype or shape is not its parameter's"
        if not is_dense(p):
            return "a parameter that is a strided view of other memory"
        if any(state.get(p, {}).get(k) is None for k in rule.state_keys):
            return "a parameter whose state torch.optim has not created yet"
    return ""


def _make(optimizer_class: type, params: Iterable[Any], options: dict) -> Any:
    if not (isinstance(optimizer_class, type)
            and issubclass(optimizer_class, torch.optim.Optimizer)):
        raise KitsuneConfigError(
            f"KitsuneOptimizer wraps a torch.optim.Optimizer class, got {optimizer_class!r}")
    try:
        return optimizer_class(params, **options)
    except TypeError as exc:
        accepted = [n for n in inspect.signature(optimizer_class).parameters if n != "params"]
        raise KitsuneConfigError(
            f"{optimizer_class.__name__} refused its arguments ({exc}); its options are: "
            f"{', '.join(accepted)}; kitsune's options are: mode, model, amp, {valid_names()}"
        ) from exc


def _scaling(optimizer: Any) -> Optional[tuple]:
    """``(grad_scale, found_inf)`` when ``torch.amp.GradScaler.step`` called this step
    (``grad_scale`` None when the gradients were unscaled already), else None."""
    found_inf = getattr(optimizer, "found_inf", None)
    return None if found_inf is None else (getattr(optimizer, "grad_scale", None), found_inf)


def _capturing(device: Optional[torch.device]) -> bool:
    return device is not None and device.type == "cuda" and \
        torch.cuda.is_current_stream_capturing()


def _now(device: Optional[torch.device]) -> float:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
