"""``FusedKernel``: the callable that stands for one fusion region in the FX graph.

The post-fusion graph calls it like an ATen op: ``kernel(*inputs)`` returns the region's
output tensor (or a tuple of them), allocated with the strides the FX metadata gives, or
written into ``out=(...)`` when the runtime places outputs itself. It launches the
generated Triton kernel on CUDA tensors, and on CPU tensors when ``TRITON_INTERPRET=1``.
Otherwise, and whenever the tensors it gets differ from the metadata it was generated for
(a stride, a dtype), it runs the region's ATen ops instead, and counts that in
``fallback_calls`` with ``last_fallback_reason``: correct, just not fused. A kernel whose
source does not load (it does not parse, or the kernel cache cannot hold it), or that fails
at its first launch (a compile error; under the interpreter, any error; on CUDA also a
corrupt entry of Triton's own cache), keeps the reason in ``compile_error`` and runs as the
region's ATen ops from then on: only its region falls back, not the graph. An out-of-memory
error at the first launch is not a compile error: it propagates, as eager's would.

A kernel generated for symbolic sizes is called with the values of its size symbols after
its tensors (``kernel(x, s0)``; then any sizes only the ATen ops read): it evaluates its
layout at those sizes (:meth:`FusedKernel.at_call`), checks its inputs against it,
allocates its outputs with it and launches its grid, so one kernel serves every size.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional, Sequence

import torch
import torch.fx as fx

from . import cache
from .heuristics import LaunchConfig
from .specs import KernelSource, TensorSpec, at_sizes, layout_function, stored_in_place


def _matches(tensor: Any, spec: TensorSpec) -> bool:
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != spec.dtype:
        return False
    if tuple(tensor.shape) != spec.shape:
        return False
    return all(
        size == 1 or have == want
        for size, have, want in zip(spec.shape, tensor.stride(), spec.stride)
    )


def _first_line(exc: BaseException) -> str:
    """``Type: message`` of ``exc``, its message cut to the last line (where Triton and
    Python put the cause) and to 300 characters."""
    last = (str(exc).strip().splitlines() or [""])[-1]
    return f"{type(exc).__name__}: {last[:300]}"


def why_not_on(device: torch.device) -> str:
    """Why generated kernels cannot run on ``device`` ('' when they can): CUDA always, the
    CPU only under Triton's interpreter (``TRITON_INTERPRET=1``)."""
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "CPU tensors without TRITON_INTERPRET=1"
    if device.type not in ("cpu", "cuda"):
        return f"no Triton kernels on {device.type}"
    return ""


class FusedKernel:
    """One generated kernel, callable on real tensors like the ATen ops it replaces."""

    def __init__(
        self,
        generated: KernelSource,
        aten_graph: fx.Graph,
        cache_dir: str,
        kernels: cache.KernelCache,
        autotune: bool = False,
        variant: Optional[Callable[[LaunchConfig], KernelSource]] = None,
        device: Optional[torch.device] = None,
    ) -> None:
        self.__name__ = generated.name
        self.__qualname__ = generated.name
        self.__module__ = "kitsune_backend.kernels"
        self.generated = generated
        self.aten_graph = aten_graph
        self._aten_module: Optional[fx.GraphModule] = None
        self.cache_dir = cache_dir
        self.kernels = kernels
        self.autotune = autotune
        self.variant = variant
        self.device = device  # where a kernel without tensor inputs writes its outputs
        self.fallback_calls = 0
        self.last_fallback_reason = ""
        self.compile_error = ""
        self.cache_repairs: list[str] = []
        """Why a kernel cache entry this kernel loaded was corrupt (it was rewritten)."""
        self._launched = False
        self._tuned = not autotune
        self._launch_fn: Any = None
        self._layout = layout_function(generated) if generated.symbols else None
        try:
            self._launch_fn = self._load(generated)
        except Exception as exc:  # noqa: BLE001 - the region runs as its ATen ops instead
            self.compile_error = f"its source did not load: {_first_line(exc)}"

    @property
    def aten_region(self) -> fx.GraphModule:
        """The region's ATen ops as a callable module (built at first use: most kernels
        never need it)."""
        if self._aten_module is None:
            self._aten_module = fx.GraphModule(torch.nn.Module(), self.aten_graph)
        return self._aten_module

    @property
    def launched(self) -> bool:
        """Whether the generated kernel itself has run (not only the region's ATen ops)."""
        return self._launched

    @property
    def source(self) -> str:
        """The Triton source this kernel launches."""
        return self.generated.source

    def _load(self, generated: KernelSource) -> Any:
        module = self.kernels.load(generated.source, self.cache_dir, self.cache_repairs)
        return getattr(module, generated.name)

    def __repr__(self) -> str:
        return f"<FusedKernel {self.__name__}: {', '.join(self.generated.nodes)}>"

    def at_call(self, args: Sequence[Any]) -> KernelSource:
        """The generated kernel as a call on ``args`` launches it: a kernel of symbolic
        sizes with its grid, shapes and strides at the sizes ``args`` carry (after the
        tensors, one per symbol)."""
        generated = self.generated
        if self._layout is None:
            return generated
        first = len(generated.inputs)
        grid, inputs, outputs = self._layout(*args[first:first + len(generated.symbols)])
        return dataclasses.replace(generated, grid=grid, inputs=at_sizes(generated.inputs, inputs),
                                   outputs=at_sizes(generated.outputs, outputs))

    def why_not_launch(self, args: Sequence[Any], launch: Optional[KernelSource] = None) -> str:
        """Why these arguments run as ATen instead of the kernel ('' when they launch);
        ``launch`` is :meth:`at_call` of ``args`` when the caller has it."""
        for tensor, spec in zip(args, (launch or self.at_call(args)).inputs):
            if not _matches(tensor, spec):
                got = (tuple(tensor.shape), tensor.stride(), tensor.dtype) if isinstance(
                    tensor, torch.Tensor) else type(tensor).__name__
                return f"input {spec.name} is {got}, the kernel was generated for " \
                       f"{(spec.shape, spec.stride, spec.dtype)}"
        if self.compile_error:
            return f"the kernel did not compile ({self.compile_error})"
        device = args[0].device if args else (self.device or torch.device("cpu"))
        reason = why_not_on(device)
        return f"{reason}: the region runs as its ATen ops" if reason else ""

    def __call__(self, *args: Any, out: Optional[Sequence[torch.Tensor]] = None) -> Any:
        """Compute the region's outputs from its inputs (see the module docstring)."""
        launch = self.at_call(args)
        reason = self.why_not_launch(args, launch)
        if reason:
            return self._run_aten(reason, args, out)
        try:
            return self._run_kernel(launch, args, out)
        except Exception as exc:
            if self._launched or isinstance(exc, torch.OutOfMemoryError):
                raise
            self.compile_error = _first_line(exc)
            return self._run_aten(self.why_not_launch(args, launch), args, out)

    def _run_aten(self, reason: str, args: Sequence[Any], out: Optional[Sequence[Any]]) -> Any:
        """The region's ATen ops on ``args`` (written into ``out`` when given)."""
        self.fallback_calls += 1
        self.last_fallback_reason = reason
        results = stored_in_place(self.aten_region(*args), args, self.generated.stores_into)
        if out is not None:
            for target, value in zip(out, results):
                target.copy_(value)
            results = tuple(out)
        return results[0] if len(results) == 1 else results

    def _run_kernel(self, launch: KernelSource, args: Sequence[Any],
                    out: Optional[Sequence[Any]]) -> Any:
        """Launch the generated kernel (as :meth:`at_call` gives it) on ``args``, into
        ``out`` or fresh outputs."""
        device = args[0].device if args else self.device
        if out is None:
            out = tuple(
                torch.empty_strided(s.shape, s.stride, dtype=s.dtype, device=device)
                for s in launch.outputs
            )
        if launch.grid > 0:
            if self._launched and self._tuned:
                self._launch(self._launch_fn, launch, args, out)
            else:  # the first launch (and tuning) compiles, into this compile's Triton cache
                with cache.triton_binaries_under(self.cache_dir):
                    self._first_launch(device, launch, args, out)
        return out[0] if len(out) == 1 else tuple(out)

    def _first_launch(self, device: torch.device, launch: KernelSource, args: Sequence[Any],
                      out: Sequence[Any]) -> None:
        if not self._tuned and device.type == "cuda" and not torch.cuda.is_current_stream_capturing():
            from .autotune import tune

            self.generated, self._launch_fn = tune(self, args, out)
            launch = self.generated
            self._tuned = True
        self._launch(self._launch_fn, launch, args, out)
        self._launched = True

    @staticmethod
    def _launch(fn: Any, generated: KernelSource, args: Sequence[Any], out: Sequence[Any]) -> None:
        """Launch ``fn`` (a kernel of ``generated``, its grid at this call's sizes) on the
        given inputs and outputs; a symbolic kernel's sizes follow the outputs."""
        first = len(generated.inputs)
        sizes = args[first:first + len(generated.symbols)]
        fn[(generated.grid,)](*args[:first], *out, *sizes, num_warps=generated.config.num_warps)
