"""World-model configuration: one dataclass per stage plus the shapes they share.

Defaults are the anchor's reference hyperparameters (64x64 frames, patch 4, T = 4).
`validate()` turns every structural mistake into one WorldbenchError line.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from worldmodel.errors import WorldbenchError
from worldmodel.layers import position_code_split

STAGES = ("tokenizer", "actions", "dynamics")


@dataclass
class StageConfig:
    embed_dim: int = 32
    heads: int = 8
    hidden: int = 128
    blocks: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    grad_clip: float = 1.0
    steps: int = 1000
    batch_size: int = 16
    log_every: int = 10
    checkpoint_every: int = 100
    eval_batches: int = 4


@dataclass
class TokenizerConfig(StageConfig):
    pass


@dataclass
class ActionsConfig(StageConfig):
    blocks: int = 2
    lr: float = 1e-4
    encoder: str = "meanpool_concat"  # a registered `lam_encoder` variant
    variance_floor: float = 0.01  # the latent-variance hinge that keeps actions from collapsing
    variance_weight: float = 100.0


@dataclass
class DynamicsConfig(StageConfig):
    blocks: int = 8
    lr: float = 1e-2
    maskgit_steps: int = 8
    temperature: float = 0.0


@dataclass
class RolloutConfig:
    clips: int = 16
    horizon: int = 8
    delta_psnr_step: int = 4  # Genie's Delta_t PSNR is read at t = 4


@dataclass
class WorldModelConfig:
    frame_size: int = 64
    patch_size: int = 4
    window: int = 4  # T, frames per training clip
    latent_dim: int = 5  # L
    bins: int = 4  # FSQ bins per latent dim; codebook = bins ** latent_dim
    n_actions: int = 4  # latent actions; a power of two
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    actions: ActionsConfig = field(default_factory=ActionsConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)

    @property
    def action_dim(self) -> int:
        return self.n_actions.bit_length() - 1

    @property
    def patches(self) -> int:
        return (self.frame_size // self.patch_size) ** 2

    @property
    def codebook_size(self) -> int:
        return self.bins**self.latent_dim

    def stage(self, name: str) -> StageConfig:
        return getattr(self, name)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "WorldModelConfig":
        nested = {"tokenizer": TokenizerConfig, "actions": ActionsConfig,
                  "dynamics": DynamicsConfig, "rollout": RolloutConfig}
        top = {k: v for k, v in values.items() if k not in nested}
        parts = {k: nested[k](**values.get(k, {})) for k in nested}
        return cls(**top, **parts).validate()

    def validate(self) -> "WorldModelConfig":
        if self.frame_size % self.patch_size:
            raise WorldbenchError(
                f"frame_size {self.frame_size} is not divisible by patch_size {self.patch_size}; "
                f"pick a patch size that divides the frame size"
            )
        if self.n_actions < 2 or self.n_actions & (self.n_actions - 1):
            raise WorldbenchError(f"n_actions {self.n_actions} is not a power of two >= 2; use 2, 4, 8, ...")
        if self.window < 2:
            raise WorldbenchError(f"window {self.window} is too short; a clip needs at least 2 frames")
        if self.bins < 2 or self.latent_dim < 1:
            raise WorldbenchError("bins must be >= 2 and latent_dim >= 1")
        if not 1 <= self.rollout.delta_psnr_step <= self.rollout.horizon or self.rollout.clips < 1:
            raise WorldbenchError(
                f"rollout.delta_psnr_step {self.rollout.delta_psnr_step} must lie within rollout.horizon "
                f"{self.rollout.horizon} (and rollout.clips >= 1); lengthen the horizon or move the step"
            )
        for name in STAGES:
            stage = self.stage(name)
            if stage.embed_dim % stage.heads:
                raise WorldbenchError(
                    f"{name}.embed_dim {stage.embed_dim} is not divisible by {name}.heads {stage.heads}; "
                    f"change one so heads divides embed_dim"
                )
            try:
                position_code_split(stage.embed_dim)
            except WorldbenchError as err:
                raise WorldbenchError(f"{name}.{err}") from None
            if stage.steps < 1 or stage.batch_size < 1 or stage.log_every < 1:
                raise WorldbenchError(f"{name}: steps, batch_size and log_every must be >= 1")
            if stage.checkpoint_every % stage.log_every:
                raise WorldbenchError(
                    f"{name}.checkpoint_every {stage.checkpoint_every} is not a multiple of "
                    f"{name}.log_every {stage.log_every}; checkpoints are written at log points"
                )
        return self
