"""Latent action model: infer a discrete action per transition, trained by predicting the next frame.

The encoder (frames -> one latent action per transition) is a swappable component, looked up by
name in the registry (`actions.encoder`). The anchor's encoder, `meanpool_concat`, is defined and
registered here; the other built-in encoders are in variants/lam_encoders.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from worldmodel.config import WorldModelConfig
from worldmodel.fsq import FSQ
from worldmodel.layers import PatchEmbed, STTransformer, unpatchify
from worldmodel.metrics import moving_pixels, moving_weighted_mean
from worldmodel.registry import lookup, register


# ----------------------------------------------------------------------------- the anchor's encoder
#
# Every `lam_encoder` maps frames [B, T, 3, H, W] -> pre-quantisation actions [B, T-1, A]. The
# built-in ones share the trunk (patch embed -> causal ST-transformer) and the action head, and
# differ in how the tokens of frames t and t+1 become the latent action of transition t.

def action_head(in_dim: int, action_dim: int) -> nn.Sequential:
    """LayerNorm -> Linear(in, 4A) -> GELU -> Linear(4A, A)."""
    return nn.Sequential(
        nn.LayerNorm(in_dim), nn.Linear(in_dim, 4 * action_dim), nn.GELU(), nn.Linear(4 * action_dim, action_dim)
    )


class EncoderTrunk(nn.Module):
    def __init__(self, config: WorldModelConfig):
        super().__init__()
        stage = config.actions
        self.embed = PatchEmbed(config.frame_size, config.patch_size, stage.embed_dim)
        self.transformer = STTransformer(stage.embed_dim, stage.heads, stage.hidden, stage.blocks, config.window,
                                         choices=config.block_choices("actions"))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.transformer(self.embed(frames))  # [B, T, P, E]


@register("lam_encoder", "meanpool_concat")
class MeanPoolConcat(nn.Module):
    """Baseline: mean over patches, then concat(frame t, frame t+1) -> MLP."""

    def __init__(self, config: WorldModelConfig):
        super().__init__()
        self.trunk = EncoderTrunk(config)
        self.head = action_head(2 * config.actions.embed_dim, config.action_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        pooled = self.trunk(frames).mean(dim=2)  # [B, T, E]
        pairs = torch.cat([pooled[:, :-1], pooled[:, 1:]], dim=-1)  # [B, T-1, 2E]
        return self.head(pairs)  # [B, T-1, A]


# ----------------------------------------------------------------------------- action norms


class StepBatchNorm(nn.BatchNorm1d):
    """Standardise each (transition step, action dim) over the batch; running statistics at eval."""

    def __init__(self, steps: int, action_dim: int):
        # One (step, dim) feature per transition: [B, T-1, A] -> [B, (T-1) A] for a plain BatchNorm.
        super().__init__(steps * action_dim, affine=False)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        # [B, T-1, A] -> [B, T-1, A]
        flat = super().forward(rearrange(latents, "b t a -> b (t a)"))  # [B, (T-1) A]
        return rearrange(flat, "b (t a) -> b t a", t=latents.shape[1])


class StepBatchWhitening(nn.Module):
    """Whiten each transition step's latents over the batch: zero mean, identity covariance.

    Standardising alone lets both action dims learn the same feature (two codes of four used, the
    "moved or not" bit twice); whitening makes the dims uncorrelated, so the second one has to carry
    something the first does not. Cholesky whitening: z = L^-1 (x - mean) with cov = L L^T.
    """

    def __init__(self, steps: int, action_dim: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(steps, action_dim))
        self.register_buffer("running_cov", torch.eye(action_dim).repeat(steps, 1, 1))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        # [B, T-1, A] -> [B, T-1, A]
        if self.training:
            mean = latents.mean(dim=0)  # [T-1, A]
            centred = latents - mean
            cov = torch.einsum("bti,btj->tij", centred, centred) / (latents.shape[0] - 1)  # [T-1, A, A]
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_cov.lerp_(cov, self.momentum)
        else:
            mean, cov = self.running_mean, self.running_cov
            centred = latents - mean
        cov = cov + self.eps * torch.eye(cov.shape[-1], device=cov.device, dtype=cov.dtype)
        lower = torch.linalg.cholesky(cov)  # [T-1, A, A]
        whitened = torch.linalg.solve_triangular(lower, rearrange(centred, "b t a -> t a b"), upper=False)
        return rearrange(whitened, "t a b -> b t a")


ACTION_NORMS = {"batch": StepBatchNorm, "whiten": StepBatchWhitening}  # plus "none": the anchor's raw latents


def make_action_norm(kind: str, steps: int, action_dim: int) -> nn.Module | None:
    return None if kind == "none" else ACTION_NORMS[kind](steps, action_dim)


# ----------------------------------------------------------------------------- the code-entropy term

def code_entropies(pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean entropy of each transition's code, entropy of the batch's mean code distribution), in nats.

    pre [B, T-1, A] are the latents the 2-level FSQ rounds: bit i is +1 with probability sigmoid(2 z_i),
    the very level (tanh(z_i) + 1) / 2 it rounds, so the soft code is the FSQ's own, before rounding.
    """
    bit_one = torch.sigmoid(2 * pre.flatten(0, 1))  # [N, A]
    per_bit = -(bit_one * bit_one.clamp_min(1e-12).log() + (1 - bit_one) * (1 - bit_one).clamp_min(1e-12).log())
    codes = torch.arange(2 ** pre.shape[-1], device=pre.device)  # the FSQ's index order: bit i of the index
    bits = (codes[:, None] >> torch.arange(pre.shape[-1], device=pre.device)) & 1  # [C, A]
    soft_codes = torch.where(bits.bool(), bit_one[:, None], 1 - bit_one[:, None]).prod(-1)  # [N, C]
    mean_code = soft_codes.mean(dim=0)  # [C]
    batch_entropy = -(mean_code * mean_code.clamp_min(1e-12).log()).sum()
    return per_bit.sum(-1).mean(), batch_entropy


# ----------------------------------------------------------------------------- the model

class LatentActionModel(nn.Module):
    def __init__(self, config: WorldModelConfig):
        super().__init__()
        stage = config.actions
        E, A = stage.embed_dim, config.action_dim
        self.patch_size = config.patch_size
        self.variance_floor = stage.variance_floor
        self.variance_weight = stage.variance_weight
        self.moving_weight = stage.moving_weight
        self.entropy_weight = stage.entropy_weight
        self.fsq = FSQ(A, 2)
        self.encoder = lookup("lam_encoder", stage.encoder)(config)  # built before the decoder: the seeded init order
        self.mask_later_frames = stage.decoder_context == "first"
        self.action_norm = make_action_norm(stage.action_norm, config.window - 1, A)
        self.embed = PatchEmbed(config.frame_size, config.patch_size, E)
        self.mask_token = nn.Parameter(torch.zeros(E))
        self.decoder = STTransformer(E, stage.heads, stage.hidden, stage.blocks, config.window, cond_dim=A,
                                     choices=config.block_choices("actions"))
        self.to_pixels = nn.Sequential(nn.LayerNorm(E), nn.Linear(E, 3 * config.patch_size**2), nn.Tanh())

    def infer_actions(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # [B, T, 3, H, W] -> (pre-quantisation [B, T-1, A], quantised [B, T-1, A])
        return self._encode(frames)[1:]

    def _encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(encoder output, pre-quantisation latents, quantised actions), each [B, T-1, A]."""
        raw = self.encoder(frames)  # [B, T-1, A]
        pre = raw if self.action_norm is None else self.action_norm(raw)
        return raw, pre, self.fsq.quantize(pre)

    def decode(self, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        # frames 0..T-2 [B, T-1, 3, H, W], actions [B, T-1, A] -> predicted frames 1..T-1
        tokens = self.embed.proj(self.embed.patchify(frames))  # [B, T-1, P, E]
        if self.mask_later_frames:
            # Only frame 0 is seen: the actions must carry what changes afterwards.
            tokens = torch.cat([tokens[:, :1], self.mask_token.expand_as(tokens[:, 1:])], dim=1)
        tokens = tokens + self.embed.spatial_code
        return unpatchify(self.to_pixels(self.decoder(tokens, actions)), self.patch_size)

    def loss(self, frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, extras, _ = self.loss_and_actions(frames)
        return loss, extras

    def loss_and_actions(self, frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """`loss`, plus the quantised actions [B, T-1, A] it decoded with (evaluation reads both from one pass)."""
        raw, pre, actions = self._encode(frames)
        predicted = self.decode(frames[:, :-1], actions)  # [B, T-1, 3, H, W]
        if self.moving_weight:
            errors = F.smooth_l1_loss(predicted, frames[:, 1:], reduction="none")  # [B, T-1, 3, H, W]
            reconstruction = errors.mean()  # the task loss (val_loss): the plain mean, as below
            trained_on = moving_weighted_mean(errors, moving_pixels(frames), self.moving_weight)
        else:
            reconstruction = trained_on = F.smooth_l1_loss(predicted, frames[:, 1:])
        # Hinge on the batch variance of the pre-quantisation latents keeps the actions from collapsing.
        # With action_norm it is taken before the norm (whose rescaling would hide a shrinking encoder output)
        # and per transition step, so an output that only tracks the step index cannot satisfy it.
        variance = raw.var(dim=0).mean() if self.action_norm is not None else raw.flatten(0, 1).var(dim=0).mean()
        variance_penalty = F.relu(self.variance_floor - variance)
        code_entropy, batch_entropy = code_entropies(pre)
        entropy_penalty = code_entropy - batch_entropy
        loss = trained_on + self.variance_weight * variance_penalty
        if self.entropy_weight:
            loss = loss + self.entropy_weight * entropy_penalty
        extras = {"encoder_variance": variance, "reconstruction": reconstruction, "variance_penalty": variance_penalty,
                  "entropy_penalty": entropy_penalty}
        # tensors: read at log points only
        return loss, {name: value.detach() for name, value in extras.items()}, actions
