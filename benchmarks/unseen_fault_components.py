"""Broken components the gate has never been tuned on, for benchmarks/unseen_faults.py.

Each is a bug a real change could bring into the dynamics' action path. They are a plugin (`[plugins] modules =
["unseen_fault_components"]`), not built in: `bench validate`'s planted faults are what the profile was tuned
against, and these are a check on faults it was not.
"""
import torch
import torch.nn.functional as F
from torch import nn

from variants import register

NOISE_SD = 1.0  # the LAM's latent actions are +-1 per bit: an sd of 1 flips about one bit in six


@register("action_input", "shuffled_in_training")
class ShuffledInTraining(nn.Module):
    """A batching bug: in training, 30% of the transitions are conditioned on another clip's action."""

    share = 0.3  # of the training transitions

    def __init__(self, config):
        super().__init__()

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return actions  # [B, T-1, A]
        swap = torch.rand(actions.shape[:2], device=actions.device) < self.share  # [B, T-1]
        others = actions[torch.randperm(actions.shape[0], device=actions.device)]  # [B, T-1, A]
        return torch.where(swap.unsqueeze(-1), others, actions)  # [B, T-1, A]


@register("action_input", "shuffled_10_in_training")
class Shuffled10InTraining(ShuffledInTraining):
    """The same batching bug on 10% of the training transitions."""

    share = 0.1


@register("action_input", "previous_action")
class PreviousAction(nn.Module):
    """An off-by-one: frame t+1 is conditioned on the action that led into frame t."""

    def __init__(self, config):
        super().__init__()

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        return F.pad(actions[:, :-1], (0, 0, 1, 0))  # [B, T-1, A]: zeros, then actions shifted one step


@register("action_input", "noisy")
class Noisy(nn.Module):
    """A precision bug: Gaussian noise (sd 1) on the latent actions, in training and in rollouts."""

    def __init__(self, config):
        super().__init__()

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        return actions + NOISE_SD * torch.randn_like(actions)  # [B, T-1, A]


@register("action_input", "dropout_left_on")
class DropoutLeftOn(nn.Module):
    """Dropout on the latent actions (p 0.2) that stays on in evaluation and rollouts: the train flag never
    reaches it."""

    p = 0.2

    def __init__(self, config):
        super().__init__()

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        return F.dropout(actions, self.p, training=True)  # [B, T-1, A]
