"""kernels: every :class:`~kitsune_backend.codegen.plans.KernelPlan` in the graph becomes a
generated kernel.

For each plan node, the plan's Triton source is generated, loaded through the kernel
cache, and a :class:`~kitsune_backend.codegen.kernel.FusedKernel` replaces the plan as the
node's target. Plans whose generated code is the same (:func:`same_kernel_key`) share one
kernel, so it is compiled and loaded once. A cache entry found corrupt is rewritten, with a
decline saying why; a source that does not load leaves its kernel running as the region's
ATen ops (its ``compile_error`` says why), the other kernels unaffected.
"""

from __future__ import annotations

import torch.fx as fx

from ..ir import Decline, KernelRecord, PassContext, PassResult
from .kernel import FusedKernel
from .plans import KernelPlan
from .source import KernelSource


def generate_kernels(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Put a generated kernel in place of each kernel plan; ``ctx.kernels`` gets a
    :class:`~kitsune_backend.ir.KernelRecord` per plan.

    Before::

        kitsune_fused_mul_add_0 = <KernelPlan kitsune_fused_mul_add_0: mul, add>(x, y)

    After::

        kitsune_fused_mul_add_0 = <FusedKernel kitsune_fused_mul_add_0: mul, add>(x, y)
    """
    ctx.kernels = []
    kernels: dict[tuple, FusedKernel] = {}  # by same_kernel_key
    for node in gm.graph.nodes:
        plan = node.target
        if not isinstance(plan, KernelPlan):
            continue
        generated = plan.generate(None)
        key = same_kernel_key(generated)
        kernel = kernels.get(key)
        if kernel is None:
            tune = plan.tunable and ctx.config.autotune
            kernel = kernels[key] = FusedKernel(
                generated, plan.aten_graph, ctx.config.cache_dir, ctx.process.kernel_cache,
                autotune=tune,
                variant=plan.generate if tune else None, device=plan.device)
        node.target = kernel
        ctx.kernels.append(KernelRecord(kernel.__name__, plan.nodes, kernel.source, kernel))
    shared = len(ctx.kernels) - len(kernels)
    notes = [f"{len(kernels)} kernel(s) generated for {len(ctx.kernels)} plan(s)"
             + (f"; {shared} plan(s) reuse an identical kernel" if shared else "")]
    return PassResult(changed=bool(ctx.kernels), notes=notes, declines=_cache_declines(kernels),
                      stats={"kernels_generated": len(kernels), "kernels_shared": shared})


def _cache_declines(kernels: dict[tuple, FusedKernel]) -> list[Decline]:
    """A decline per kernel cache entry found corrupt (and rewritten) while loading."""
    return [Decline("kernels", f"kernel cache entry of {kernel.__name__} not used, it was "
                    f"corrupt ({why}): rewritten from the generated source",
                    kernel.generated.nodes[0] if kernel.generated.nodes else "")
            for kernel in kernels.values() for why in kernel.cache_repairs]


def same_kernel_key(generated: KernelSource) -> tuple:
    """What makes two generated kernels interchangeable: the code without its comments
    (which name the FX nodes) and with the kernel's name taken out, the exact layouts it
    was generated for, and its launch. A kernel of symbolic sizes differs from every static
    one: its layouts hold :class:`~kitsune_backend.codegen.symbolic.Size` expressions
    (never equal to an int) and its size arguments are part of the key; two symbolic ones
    are alike only over the same symbols, at the same positions."""
    code = [line.split("  # ")[0] for line in generated.source.splitlines()
            if not line.startswith("#")]
    layouts = tuple((s.shape, s.stride, s.dtype) for s in (*generated.inputs, *generated.outputs))
    return ("\n".join(code).replace(generated.name, "KERNEL"), layouts, generated.grid,
            generated.config, generated.columns, generated.symbols)
