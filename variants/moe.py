"""`ffn` component "moe": a Mixture-of-Experts SwiGLU feed-forward with top-k routing and a load-balancing loss.

As tinyworlds PR #20 added it to the dynamics: every expert a full SwiGLU of the block's hidden width, a
bias-free linear router, each token sent to its top-k experts and their outputs mixed by the softmax over
those k logits (Shazeer et al. 2017). The Switch-Transformer balance loss (Fedus et al. 2022),
N * sum_i f_i P_i with f_i the share of routed slots that went to expert i and P_i its mean router
probability, is 1 at an even load and grows as the load concentrates; the trainer adds it, weighted, to what
the stage trains on (never to its val_loss). In eval mode the layer counts the tokens each expert gets,
which its stage records as the `moe_load_cv` and `moe_utilisation` KPIs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from worldmodel.auxiliary import Auxiliary
from worldmodel.layers import BlockChoices, SwiGLU
from worldmodel.registry import register


def balance_loss(router_probs: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Switch Transformer's N * sum_i f_i P_i: router_probs [N, X] (softmax over all X experts), chosen [N, k]."""
    experts = router_probs.shape[-1]
    dispatched = torch.bincount(chosen.flatten(), minlength=experts).to(router_probs.dtype)  # [X]
    fractions = dispatched / chosen.numel()  # f_i: share of the N k routed slots
    return experts * (fractions * router_probs.mean(dim=0)).sum()


@register("ffn", "moe")
class MixtureOfExperts(Auxiliary):
    """Mixture-of-Experts SwiGLU (Switch Transformer balance loss): experts, top_k, balance weight from the config."""

    def __init__(self, dim: int, hidden: int, choices: BlockChoices):
        super().__init__()
        self.top_k, self.balance_weight = choices.top_k, choices.balance_weight
        self.router = nn.Linear(dim, choices.experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(dim, hidden) for _ in range(choices.experts))
        self.register_buffer("load", torch.zeros(choices.experts, dtype=torch.float64), persistent=False)  # [X]

    def route(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(router probabilities [N, X], chosen experts [N, k], their mixing weights [N, k]) for tokens [N, E]."""
        logits = self.router(tokens)  # [N, X]
        top_logits, chosen = logits.topk(self.top_k, dim=-1)  # [N, k] each
        return logits.softmax(dim=-1), chosen, top_logits.softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [..., E] -> [..., E]
        tokens = x.reshape(-1, x.shape[-1])  # [N, E]
        probs, chosen, weights = self.route(tokens)
        if self.training:
            self._loss_terms = {"moe_balance": self.balance_weight * balance_loss(probs, chosen)}
        else:
            self.load += torch.bincount(chosen.flatten(), minlength=len(self.experts)).to(self.load)
        slot_token = repeat(torch.arange(tokens.shape[0], device=x.device), "n -> (n k)", k=self.top_k)  # [N k]
        slot_expert, slot_weight = chosen.flatten(), rearrange(weights, "n k -> (n k) 1")  # [N k], [N k, 1]
        mixed = torch.zeros_like(tokens)  # [N, E]
        for index, expert in enumerate(self.experts):
            slots = (slot_expert == index).nonzero().squeeze(-1)  # the routed slots this expert serves
            rows = slot_token[slots]  # [n_e]
            mixed = mixed.index_add(0, rows, (expert(tokens[rows]) * slot_weight[slots]).to(mixed.dtype))
        return mixed.reshape(x.shape)

    def reset_measurements(self) -> None:
        self.load.zero_()

    def measurements(self) -> dict[str, float]:
        """moe_load_cv: coefficient of variation of the experts' shares of the routed tokens (0 = even);
        moe_utilisation: share of the experts that got any token. Both over the eval forwards since the reset."""
        if not self.load.sum():
            return {}
        shares = self.load / self.load.sum()  # [X]
        return {"moe_load_cv": float(shares.std(correction=0) / shares.mean()),
                "moe_utilisation": float((self.load > 0).double().mean())}
