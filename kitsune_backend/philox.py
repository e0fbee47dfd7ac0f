"""``kitsune::philox_uniform``: uniform random numbers from a seed and each element's index.

``philox_uniform(seed, like)`` is a float32 tensor of ``like``'s shape whose element ``i``
(counting in row-major order) is Triton's ``tl.rand(seed, i)``: Philox 4x32 with 10 rounds
(counter ``(i_lo, i_hi, 0, 0)``, key ``(seed_lo, seed_hi)``), its first word mapped to
[0, 1). The value depends only on ``seed`` and ``i``, so a generated kernel computes it in
place (no random state, nothing read but the seed), and the ATen implementation here, written
with integer tensor ops, gives the same bits: a region that runs as ATen ops draws exactly
what its kernel would have.

Random ops become this op plus one ``randint`` for the seed
(:mod:`kitsune_backend.passes.dropout_decomposition`); the seed is drawn from PyTorch's
generator, so ``torch.manual_seed`` reproduces a run and captured CUDA graphs draw a fresh
seed at every replay (PyTorch's graph-safe generator state).
"""

from __future__ import annotations

import torch

_MASK = 0xFFFFFFFF
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_ROUNDS = 10
_TO_UNIT = 4.6566127342e-10  # 2**-31, as Triton's uint_to_uniform_float writes it


def _umulhi(constant: int, x: torch.Tensor) -> torch.Tensor:
    """The high 32 bits of ``constant * x`` for 32-bit unsigned values held in int64 (the
    product is split so that no partial product leaves int64)."""
    high, low = constant >> 16, constant & 0xFFFF
    return ((high * x) + ((low * x) >> 16)) >> 16


def uniform(seed: int, count: int, device: torch.device) -> torch.Tensor:
    """``tl.rand(seed, i)`` for ``i`` in ``range(count)``, as float32."""
    index = torch.arange(count, dtype=torch.int64, device=device)
    c0, c1 = index & _MASK, (index >> 32) & _MASK
    c2 = c3 = torch.zeros_like(index)
    k0, k1 = seed & _MASK, (seed >> 32) & _MASK
    for _ in range(_ROUNDS):
        old0, old2 = c0, c2
        c0 = _umulhi(_ROUND_B, old2) ^ c1 ^ k0
        c2 = _umulhi(_ROUND_A, old0) ^ c3 ^ k1
        c1 = (_ROUND_B * old2) & _MASK
        c3 = (_ROUND_A * old0) & _MASK
        k0, k1 = (k0 + _KEY_A) & _MASK, (k1 + _KEY_B) & _MASK
    signed = torch.where(c0 >= 2**31, c0 - 2**32, c0)
    signed = torch.where(signed < 0, -signed - 1, signed)
    return signed.to(torch.float32) * torch.tensor(_TO_UNIT, dtype=torch.float32)


@torch.library.custom_op("kitsune::philox_uniform", mutates_args=())
def philox_uniform(seed: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) float32 values of ``like``'s shape from the 0-d int64 ``seed``."""
    values = uniform(int(seed.item()), like.numel(), like.device)
    return values.reshape(like.shape)


@philox_uniform.register_fake
def _philox_uniform_fake(seed: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(like.shape, dtype=torch.float32, device=like.device)


PHILOX_UNIFORM = torch.ops.kitsune.philox_uniform.default
"""The op as it stands in graphs."""
