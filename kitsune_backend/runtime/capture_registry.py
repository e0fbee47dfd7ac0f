"""What the captured graphs of one process know of each other's memory."""

from __future__ import annotations

import weakref
from typing import Any

import torch


class CaptureRegistry:
    """What the captured graphs of one process know of each other's memory (one per process,
    in :class:`~kitsune_backend.process.ProcessState`).

    ``pool_outputs``: storage address -> the captured instance whose static outputs live there. An
    input found here at capture time (a forward output saved for backward, say) is read in
    place, not copied. ``static_storages``: storage address -> a parameter/buffer some
    instance reads in place. While that tensor lives nothing else can sit at its address, so
    an input found here (a view of a weight saved for backward, say) is read in place too.
    """

    def __init__(self) -> None:
        self.pool_outputs: "weakref.WeakValueDictionary[int, Any]" = \
            weakref.WeakValueDictionary()
        self.static_storages: "weakref.WeakValueDictionary[int, torch.Tensor]" = \
            weakref.WeakValueDictionary()

    def read_in_place(self, x: torch.Tensor) -> bool:
        """True when ``x`` lives in memory that stays put between calls: another instance's
        static outputs, or a parameter/buffer."""
        address = x.untyped_storage().data_ptr()
        return address in self.pool_outputs or address in self.static_storages
