"""The Dynamo entry point: ``torch.compile(model, backend="kitsune")`` calls :func:`kitsune`."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import torch
import torch.fx as fx
from torch._dynamo.backends.common import aot_autograd

from .codegen.precompile import warm_triton
from .compiler import compile_graph
from .config import Config, resolve
from .passes.decompositions import decomposition_table
from .process import PROCESS
from .session import CompileSession


def kitsune(
    gm: fx.GraphModule,
    example_inputs: Sequence[Any],
    *,
    mode: Optional[str] = None,
    options: Optional[Mapping[str, Any]] = None,
) -> Callable:
    """Compile a Dynamo FX graph with kitsune; returns the callable Dynamo will run.

    ``mode`` and ``options`` are what ``torch.compile(..., mode=..., options={...})`` passes
    on: modes are ``None``/``"default"``, ``"reduce-overhead"``, ``"max-autotune"`` and
    ``"max-autotune-no-cudagraphs"``; options are the fields of
    :class:`kitsune_backend.config.Config`. Anything else is a ``ValueError`` listing the
    valid choices; ``options`` may name the mode too (``{"mode": "max-autotune",
    "num_streams": 4}``), since ``torch.compile`` refuses ``mode`` beside ``options``.
    AOTAutograd traces forward and backward into functionalized ATen graphs, and each is
    compiled by :func:`kitsune_backend.compiler.compile_graph`.
    """
    config = resolve(mode, options)
    return _compile_with(config, mode or dict(options or {}).get("mode"), gm, example_inputs)


def compile(
    model: Optional[Callable] = None,
    *,
    mode: Optional[str] = None,
    fullgraph: bool = False,
    dynamic: Optional[bool] = None,
    disable: bool = False,
    **options: Any,
) -> Callable:
    """``torch.compile(model, backend="kitsune", ...)``, with the options checked and bound now.

    ``mode`` and ``options`` (the fields of :class:`~kitsune_backend.config.Config`, as
    keywords) are validated at this call: an unknown name or a wrong type is a
    ``ValueError`` here, not at the first call of the compiled model. The config is resolved
    here too (environment, :func:`kitsune_backend.config.patch` blocks around this call,
    mode, options), so every graph of this model — recompiles included — uses it, wherever
    they happen. ``mode`` and options combine freely (``torch.compile`` refuses both at
    once). ``fullgraph``, ``dynamic`` and ``disable`` go to ``torch.compile``; with
    ``model=None`` the result is a decorator, as with ``torch.compile``.
    """
    config = resolve(mode, options)
    return torch.compile(model, backend=bound_backend(config, mode), fullgraph=fullgraph,
                         dynamic=dynamic, disable=disable)


def bound_backend(config: Config, mode: Optional[str] = None) -> Callable:
    """A Dynamo backend (for ``torch.compile(..., backend=...)``) that compiles every graph
    with ``config``, resolved already."""

    def kitsune_bound(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable:
        return _compile_with(config, mode, gm, example_inputs)

    return kitsune_bound


def _compile_with(config: Config, mode: Optional[str], gm: fx.GraphModule,
                  example_inputs: Sequence[Any]) -> Callable:
    if any(isinstance(v, torch.Tensor) and v.device.type == "cuda" for v in example_inputs):
        warm_triton(config, PROCESS.compile_pool)  # Triton warms up while AOTAutograd traces
    session = PROCESS.history.new(config, mode)
    backend = aot_autograd(
        fw_compiler=_compiler(config, "forward", session),
        bw_compiler=_compiler(config, "backward", session),
        inference_compiler=_compiler(config, "inference", session),
        decompositions=decomposition_table(),
        keep_inference_input_mutations=True,
    )
    return backend(gm, example_inputs)


def _compiler(config: Config, kind: str, session: CompileSession) -> Callable:
    def compile_aot_graph(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable:
        """AOTAutograd's compiler for one ``kind`` of graph, bound to this compile's config."""
        return compile_graph(gm, example_inputs, config, kind, session, PROCESS)

    compile_aot_graph.__name__ = f"kitsune_{kind}_compiler"
    return compile_aot_graph
