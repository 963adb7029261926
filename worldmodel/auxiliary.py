"""What a component brings besides its output: loss terms to train on, and measurements for its stage's KPIs.

A component that has them subclasses `Auxiliary` (the Mixture-of-Experts FFN: its load-balancing loss, its
expert load). The trainer adds the loss terms to what the stage optimises and logs each under its own name;
they never enter the model's own loss, so a stage's `val_loss` KPI stays the task loss (issue 7). The stage's
evaluation reads the measurements, averaged over every such module, as `<stage>.<name>` KPIs.
"""
from __future__ import annotations

import torch
from torch import nn


class Auxiliary(nn.Module):
    """Base of a component with loss terms (set by a training forward) and measurements (gathered in eval mode)."""

    def __init__(self):
        super().__init__()
        self._loss_terms: dict[str, torch.Tensor] = {}

    def pop_loss_terms(self) -> dict[str, torch.Tensor]:
        """The weighted loss terms of the last training forward, forgotten once read (a later step has new ones)."""
        terms, self._loss_terms = self._loss_terms, {}
        return terms

    def reset_measurements(self) -> None:
        """Start measuring afresh (before a stage's evaluation)."""

    def measurements(self) -> dict[str, float]:
        """What was measured since the last reset: KPI name (without the stage) -> value."""
        return {}


def pop_loss_terms(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every component's loss terms of the last training forward, summed per name over the modules (0-d tensors)."""
    total: dict[str, torch.Tensor] = {}
    for module in model.modules():
        if isinstance(module, Auxiliary):
            for name, term in module.pop_loss_terms().items():
                total[name] = total[name] + term if name in total else term
    return total


def reset_measurements(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, Auxiliary):
            module.reset_measurements()


def measurements(model: nn.Module) -> dict[str, float]:
    """Every component's measurements, each name averaged over the modules that report it (e.g. the MoE layers)."""
    values: dict[str, list[float]] = {}
    for module in model.modules():
        if isinstance(module, Auxiliary):
            for name, value in module.measurements().items():
                values.setdefault(name, []).append(value)
    return {name: sum(found) / len(found) for name, found in values.items()}
