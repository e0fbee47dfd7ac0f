"""Launch heuristics: block sizes and ``num_warps`` for a generated kernel.

The rules, chosen for memory-bound kernels on current NVIDIA GPUs:

* pointwise: ``XBLOCK`` = 1024 elements per program (fewer when the tensor is smaller),
  ``num_warps`` = XBLOCK / 256 clamped to [1, 8]; 4 warps of 32 threads then hold
  8 fp32 elements each, two 128-bit loads per input.
* row reduction: a row of up to ``ONE_PASS_LIMIT`` columns is held in registers at once
  (``RBLOCK`` = next power of two of the row), so the input is read once; longer rows loop
  in ``LOOP_RBLOCK`` chunks, once per reduction. Short rows share a program: ``XBLOCK``
  rows so that a program holds about ``TARGET_ELEMENTS``. ``num_warps`` grows with the
  elements per program: elements / 512 clamped to [1, 16].
"""

from __future__ import annotations

import dataclasses

ONE_PASS_LIMIT = 16384
LOOP_RBLOCK = 4096
TARGET_ELEMENTS = 2048


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """Block sizes and warps for one kernel; ``rblock`` is 0 for pointwise kernels."""

    xblock: int
    rblock: int = 0
    num_warps: int = 4

    def describe(self) -> str:
        """Short text for the kernel header and the autotune log."""
        r = f", RBLOCK={self.rblock}" if self.rblock else ""
        return f"XBLOCK={self.xblock}{r}, num_warps={self.num_warps}"


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _warps(elements: int, most: int) -> int:
    return max(1, min(most, elements // 512 if elements >= 512 else 1))


def pointwise_config(numel: int) -> LaunchConfig:
    """The heuristic config of a pointwise kernel over ``numel`` elements."""
    xblock = min(1024, max(16, next_power_of_2(numel)))
    return LaunchConfig(xblock=xblock, num_warps=max(1, min(8, xblock // 256)))


def reduction_config(rows: int, columns: int) -> LaunchConfig:
    """The heuristic config of a row reduction of ``rows`` x ``columns``."""
    if columns <= ONE_PASS_LIMIT:
        rblock = max(2, next_power_of_2(columns))
    else:
        rblock = LOOP_RBLOCK
    xblock = max(1, min(next_power_of_2(rows), TARGET_ELEMENTS // rblock))
    return LaunchConfig(xblock=xblock, rblock=rblock, num_warps=_warps(xblock * rblock, 16))


def candidates(base: LaunchConfig, columns: int) -> list[LaunchConfig]:
    """A few configs around ``base`` for ``max-autotune`` to time (``base`` first)."""
    found = [base]
    if base.rblock == 0:
        for xblock in (512, 1024, 2048, 4096):
            for warps in (4, 8):
                found.append(LaunchConfig(xblock=xblock, num_warps=warps))
    else:
        rblocks = [base.rblock] if base.rblock >= columns else [1024, 2048, 4096, 8192]
        for rblock in rblocks:
            for xblock in {max(1, base.xblock // 2), base.xblock, base.xblock * 2}:
                for warps in {max(1, base.num_warps // 2), base.num_warps, min(32, base.num_warps * 2)}:
                    found.append(LaunchConfig(xblock=xblock, rblock=rblock, num_warps=warps))
    unique = []
    for config in found:
        if config not in unique:
            unique.append(config)
    return unique
