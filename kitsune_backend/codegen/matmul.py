"""Triton source for a matmul with its bias add: ``out = a @ b + bias`` in one kernel.

cuBLAS runs a small-M GEMM (GPT-2's QKV projection: 128 x 768 x 2304) as split-K, two
kernels, and a bias add that nothing fusable follows is a third. This kernel does all of it
in one launch: each program computes a ``BLOCK_M x BLOCK_N`` tile of ``out``, walking K in
``BLOCK_K`` steps with ``tl.dot`` (fp32 accumulation), and adds the bias to the tile before
its one store. Programs are numbered in groups of ``GROUP_M`` row tiles, so that the
programs running together share columns of ``b`` while those are in L2.

fp32 operands use ``input_precision="ieee"`` when ``torch.get_float32_matmul_precision()``
is ``"highest"`` (PyTorch's default, the precision eager's cuBLAS call has) and ``"tf32"``
otherwise, as cuBLAS would; fp16/bf16 operands use the tensor cores with fp32 accumulation.
Shapes and strides are constants of the source, as in every generated kernel.
"""

from __future__ import annotations

import dataclasses

import torch

from .indexing import max_offset
from .ops import TL_DTYPES
from .source import INT32_LIMIT, KernelSource, TensorSpec

GROUP_M = 8
"""Row tiles per program group (the order in which programs walk the output tiles)."""

MATMUL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
"""Operand dtypes the kernel is generated for."""


@dataclasses.dataclass(frozen=True)
class MatmulTile:
    """The tile one program computes, and its warps. ``tl.dot`` needs every block >= 16."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int

    def describe(self) -> str:
        """Short text for the kernel header and the decision notes."""
        return (f"BLOCK_M={self.block_m}, BLOCK_N={self.block_n}, BLOCK_K={self.block_k}, "
                f"num_warps={self.num_warps}")


# fp32 without TF32 runs on the CUDA cores, where small tiles and many programs win: these
# are the best of a sweep of 108 tiles on the H100 at GPT-2's shapes (M = 128), best first.
# The tensor-core tiles (fp16, bf16, TF32) are common GEMM tiles, not tuned here; on CUDA
# every candidate is timed before one is used.
FMA_TILES = (MatmulTile(16, 32, 32, 2), MatmulTile(32, 32, 32, 4), MatmulTile(16, 64, 32, 4))
TENSOR_CORE_TILES = (MatmulTile(64, 64, 32, 4), MatmulTile(32, 128, 32, 4),
                     MatmulTile(128, 64, 32, 8))


def precision(dtype: torch.dtype) -> str:
    """The ``tl.dot`` input precision that matches eager for operands of ``dtype``."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def tiles(dot_precision: str) -> tuple[MatmulTile, ...]:
    """The tiles worth trying for a dot of ``dot_precision``, the heuristic's pick first."""
    return FMA_TILES if dot_precision == "ieee" else TENSOR_CORE_TILES


def matmul_bias_name(a: TensorSpec, b: TensorSpec) -> str:
    """``kitsune_mm_bias_<M>x<K>x<N>``: equal for equal shapes, so that a kernel timed at
    compile time and the one put in the graph share Triton's compiled binary."""
    return f"kitsune_mm_bias_{a.shape[0]}x{a.shape[1]}x{b.shape[1]}"


def matmul_bias_source(nodes: tuple[str, ...], a: TensorSpec, b: TensorSpec, bias: TensorSpec,
                       out: TensorSpec, tile: MatmulTile, dot_precision: str) -> KernelSource:
    """The kernel computing ``out = a @ b + bias`` (``a`` is M x K, ``b`` K x N, ``bias``
    has N elements, one per column) with ``tile`` and ``tl.dot``'s ``dot_precision``
    (:func:`precision`); ``nodes`` are the FX nodes it stands for."""
    name = matmul_bias_name(a, b)
    (m, k), n = a.shape, b.shape[1]
    bm, bn, bk = tile.block_m, tile.block_n, tile.block_k
    row_tiles, col_tiles = -(-m // bm), -(-n // bn)
    grid = row_tiles * col_tiles
    wide = any(max_offset(s.shape, s.stride) > INT32_LIMIT for s in (a, b, bias, out))
    bias_stride = bias.stride[-1] if bias.shape and bias.shape[-1] != 1 else 0
    ragged_k = k % bk != 0  # the last step along K is partial: its loads are masked
    a_mask = f" & (kk[None, :] < {k})" if ragged_k else ""
    b_mask = f" & (kk[:, None] < {k})" if ragged_k else ""
    index = ".to(tl.int64)" if wide else ""
    body = [
        "    pid = tl.program_id(0)",
        f"    group = pid // {GROUP_M * col_tiles}",
        f"    first_row = group * {GROUP_M}",
        f"    rows_in_group = min({row_tiles} - first_row, {GROUP_M})",
        f"    tile_m = first_row + (pid % {GROUP_M * col_tiles}) % rows_in_group",
        f"    tile_n = (pid % {GROUP_M * col_tiles}) // rows_in_group",
        f"    rm = (tile_m * {bm} + tl.arange(0, {bm})){index}",
        f"    rn = (tile_n * {bn} + tl.arange(0, {bn})){index}",
        f"    rk = tl.arange(0, {bk}){index}",
        f"    row_ok = rm < {m}",
        f"    col_ok = rn < {n}",
        f"    acc = tl.zeros(({bm}, {bn}), dtype=tl.float32)",
        f"    for k0 in range(0, {k}, {bk}):",
        "        kk = k0 + rk",
        f"        x = tl.load(in0 + rm[:, None] * {a.stride[0]} + kk[None, :] * {a.stride[1]}, "
        f"mask=row_ok[:, None]{a_mask}, other=0.0)",
        f"        w = tl.load(in1 + kk[:, None] * {b.stride[0]} + rn[None, :] * {b.stride[1]}, "
        f"mask=col_ok[None, :]{b_mask}, other=0.0)",
        f'        acc = tl.dot(x, w, acc, input_precision="{dot_precision}")',
        f"    acc += tl.load(in2 + rn * {bias_stride}, mask=col_ok, other=0.0)"
        ".to(tl.float32)[None, :]",
        f"    tl.store(out0 + rm[:, None] * {out.stride[0]} + rn[None, :] * {out.stride[1]}, "
        f"acc.to({TL_DTYPES[out.dtype]}), mask=row_ok[:, None] & col_ok[None, :])",
    ]
    header = [
        f"# kitsune generated kernel {name}",
        f"# FX nodes: {', '.join(nodes)}",
        *(f"# in{i}: {s.describe()}" for i, s in enumerate((a, b, bias))),
        f"# out0: {out.describe()}",
        f"# matmul {m} x {k} @ {k} x {n} plus a bias per column, {dot_precision} dot with "
        f"fp32 accumulation; {tile.describe()}; grid ({grid},)",
        "import triton",
        "import triton.language as tl",
        "",
        f"GRID = ({grid},)",
        f"NUM_WARPS = {tile.num_warps}",
        "",
        "",
        "@triton.jit",
        f"def {name}(in0, in1, in2, out0):",
    ]
    source = "\n".join(header + body) + "\n"
    return KernelSource(name, source, (a, b, bias), (out,), grid, tile, nodes, k)
