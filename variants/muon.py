"""`optimizer` component "muon": orthogonalised momentum for the hidden weight matrices, AdamW for the rest.

Muon (K. Jordan et al. 2024, kellerjordan.github.io/posts/muon): keep a Nesterov momentum of each weight
matrix's gradient, replace it by the nearest semi-orthogonal matrix (5 iterations of the quintic Newton-Schulz
map X <- a X + (b A + c A^2) X, A = X X^T, with (a, b, c) = (3.4445, -4.7750, 2.0315), from X = M / ||M||_F),
scale by sqrt(max(1, rows / cols)) and step along it. `torch.optim.Muon` implements exactly that, so it does the
work here. Which parameters: the weight matrices of the attention and SwiGLU layers (every expert's too);
AdamW, as the anchor, takes the rest: patch and latent embeddings, norms and their conditioning projections,
biases, routers, output heads, mask tokens. As in tinyworlds PR #20, both use the stage's learning rate (the
schedule sets it on every group), and both the stage's weight decay.
"""
from __future__ import annotations

import torch
from torch import nn

from worldmodel.config import StageConfig
from worldmodel.layers import Attention, SwiGLU
from worldmodel.registry import register
from worldmodel.train import FlatAdamW

MOMENTUM = 0.95
NS_STEPS = 5
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The 2-D weights of the attention and SwiGLU layers, in model.parameters() order (the ones Muon takes)."""
    chosen = {id(p) for module in model.modules() if isinstance(module, (Attention, SwiGLU))
              for p in module.parameters() if p.ndim == 2}
    return [p for p in model.parameters() if id(p) in chosen]


class MuonWithAdamW:
    """Two optimizers stepped as one: Muon on `matrices`, AdamW on `rest` (the trainer sees one optimizer)."""

    def __init__(self, matrices: list[nn.Parameter], rest: list[nn.Parameter], lr: float, weight_decay: float):
        self.parts: dict[str, torch.optim.Optimizer] = {}
        if matrices:
            self.parts["muon"] = torch.optim.Muon(matrices, lr=lr, weight_decay=weight_decay, momentum=MOMENTUM,
                                                  nesterov=True, ns_coefficients=NS_COEFFICIENTS, ns_steps=NS_STEPS)
        if rest:  # the anchor's AdamW (worldmodel.train.make_optimizer's), on these parameters only
            self.parts["adamw"] = FlatAdamW(rest, lr=lr, weight_decay=weight_decay)

    @property
    def param_groups(self) -> list[dict]:
        return [group for part in self.parts.values() for group in part.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts.values():
            part.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for part in self.parts.values():
            part.step()

    def state_dict(self) -> dict:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, part in self.parts.items():
            part.load_state_dict(state[name])


@register("optimizer", "muon")
def muon(model: nn.Module, config: StageConfig) -> MuonWithAdamW:
    """Muon (Newton-Schulz orthogonalised momentum) for attention and SwiGLU weight matrices, AdamW for the rest."""
    matrices = hidden_matrices(model)
    taken = {id(p) for p in matrices}
    return MuonWithAdamW(matrices, [p for p in model.parameters() if id(p) not in taken], config.lr,
                         config.weight_decay)
