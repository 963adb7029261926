"""`maskgit_schedule` components beyond the anchor's exponential one (worldmodel/dynamics.py).

cosine: MaskGIT's own schedule (Chang et al. 2022): a share cos(pi/2 s/S) of the tokens still masked after
round s of S, the most confident unmasked first.
halton: the Halton scheduler (Besnier et al., ICLR 2025): which tokens a round unmasks follows a 2-D Halton
low-discrepancy sequence over the patch grid instead of the model's confidence, so each round's tokens are
spread over the frame and no two neighbours are decided blind to each other. How many per round stays the
anchor's exponential count, so the variant changes the order alone.
"""
from __future__ import annotations

import math

import torch

from worldmodel.config import WorldModelConfig
from worldmodel.dynamics import ConfidenceSchedule
from worldmodel.registry import register


@register("maskgit_schedule", "cosine")
class CosineSchedule(ConfidenceSchedule):
    """MaskGIT's cosine schedule: unmasked share 1 - cos(pi/2 s/S) after round s of S, most confident first."""

    def unmasked_fraction(self, round_index: int, rounds: int) -> float:
        return 1.0 - math.cos(math.pi / 2 * round_index / rounds)


def radical_inverse(index: int, base: int) -> float:
    """The index-th element of the van der Corput sequence in `base` (digits of index mirrored after the point)."""
    value, scale = 0.0, 1.0 / base
    while index:
        index, digit = divmod(index, base)
        value += digit * scale
        scale /= base
    return value


def halton_order(grid: int) -> list[int]:
    """Every patch of a grid x grid frame (row-major index), in the order the 2-D Halton sequence (bases 2 and 3)
    first lands in it."""
    order, seen, index = [], set(), 1
    while len(order) < grid * grid and index < 10_000 * grid * grid:
        x, y = int(radical_inverse(index, 2) * grid), int(radical_inverse(index, 3) * grid)
        if (patch := y * grid + x) not in seen:
            seen.add(patch)
            order.append(patch)
        index += 1
    return order + [patch for patch in range(grid * grid) if patch not in seen]  # never needed: the sequence is dense


@register("maskgit_schedule", "halton")
class HaltonSchedule(ConfidenceSchedule):
    """Halton scheduler (Besnier et al. 2025): tokens unmasked in 2-D Halton order, the anchor's exponential counts."""

    def __init__(self, config: WorldModelConfig):
        super().__init__(config)
        self.order = torch.tensor(halton_order(config.grid))  # [P]

    def choose(self, confidence: torch.Tensor, already: int, count: int) -> torch.Tensor:
        # The next `count` positions of the order, the same in every row: the first `already` are unmasked.
        chosen = self.order[already : already + count].to(confidence.device)  # [count]
        return chosen.expand(confidence.shape[0], -1)  # [B, count]
