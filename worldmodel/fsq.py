"""Finite scalar quantisation: every latent dim is bounded and rounded to one of `bins` levels."""
from __future__ import annotations

import torch


class FSQ:
    """No parameters: a fixed grid of bins ** dim codes in [-1, 1] ** dim."""

    def __init__(self, dim: int, bins: int):
        self.dim = dim
        self.bins = bins
        self.half = (bins - 1) / 2
        self.codebook_size = bins**dim

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        # z [..., dim] -> same shape, values on the grid; straight-through gradient past the rounding
        levels = (torch.tanh(z) + 1) * self.half  # [0, bins - 1]
        rounded = levels + (torch.round(levels) - levels).detach()
        return rounded / self.half - 1

    def to_indices(self, quantized: torch.Tensor) -> torch.Tensor:
        # [..., dim] on the grid -> [...] int64, index = sum(digit_i * bins ** i)
        digits = torch.round((quantized + 1) * self.half).long()
        place = self.bins ** torch.arange(self.dim, device=quantized.device)
        return (digits * place).sum(-1)

    def from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        # [...] int64 -> [..., dim] float on the grid
        place = self.bins ** torch.arange(self.dim, device=indices.device)
        digits = (indices.unsqueeze(-1) // place) % self.bins
        return digits.float() / self.half - 1
