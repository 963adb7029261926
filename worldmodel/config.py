"""World-model configuration: one dataclass per stage plus the shapes they share.

Defaults are the anchor's reference hyperparameters (64x64 frames, patch 4, T = 4).
`validate()` turns every structural mistake into one WorldbenchError line.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from worldmodel.errors import WorldbenchError
from worldmodel.layers import BlockChoices, position_code_split

STAGES = ("tokenizer", "actions", "dynamics")
OPT_IN = "opt_in"  # field metadata: a switch that is off by default and omitted from stage ids while off
# field metadata: how a trained model decodes, not what it learns: never in a stage id (the run id has it), so
# variants that decode differently share the trained stage and differ only in their rollouts
DECODE_ONLY = "decode_only"


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
    # Adds a 2-D rotary code to the spatial attention (worldmodel.layers.rotary_tables), so attention
    # scores can depend on the offset between patches: moving a sprite one patch becomes one head's
    # "look one to the left" instead of a lookup learned over absolute positions. No parameters; off
    # in the anchor (its absolute sin/cos code stays either way).
    rotary: bool = field(default=False, metadata={OPT_IN: True})
    # "none": the learning rate stays at lr after the warmup (the anchor); "cosine": it falls along a
    # cosine to lr / 10 at the last step, which settles a short budget's last steps instead of leaving
    # them at full step size.
    lr_decay: str = field(default="none", metadata={OPT_IN: True})
    # ema: evaluate (and hand downstream) an exponential moving average of the weights with this decay
    # instead of the last iterate, whose position in the last steps' noise is what differs most between
    # seeds and between machines. 0 = off (the anchor).
    ema: float = field(default=0.0, metadata={OPT_IN: True})
    # init_noise: multiply every initial weight by (1 + init_noise * N(0, 1)), drawn from a generator of
    # its own: the same model and data with different float rounding, as a harmless refactor or another
    # CPU gives (bench validate's null row). 0 = off.
    init_noise: float = field(default=0.0, metadata={OPT_IN: True})
    # Component slots (worldmodel/registry.py, `bench list components`), each a registered name, the anchor's by
    # default and opt-in, so a config that leaves them alone keeps its stage ids and checkpoints.
    # ffn: the blocks' feed-forward, "swiglu" (dense) or "moe" (Mixture-of-Experts; moe_* are its options).
    ffn: str = field(default="swiglu", metadata={OPT_IN: True})
    moe_experts: int = field(default=4, metadata={OPT_IN: True})
    moe_top_k: int = field(default=2, metadata={OPT_IN: True})
    moe_balance_weight: float = field(default=0.01, metadata={OPT_IN: True})
    # optimizer: "adamw" (the anchor) or "muon" (Newton-Schulz orthogonalised updates for the weight matrices).
    optimizer: str = field(default="adamw", metadata={OPT_IN: True})
    # position: what the spatial attention knows of where patches are, besides the absolute sin/cos code:
    # "absolute" (nothing more), "rotary", "alibi". "rotary" is stored as `rotary = true` (the older switch), so a
    # config written either way has the same stage ids.
    position: str = field(default="absolute", metadata={OPT_IN: True})
    # conditioning: how the actions condition the norms of a conditioned stack (LAM decoder, dynamics): "film" or
    # "adaln_zero". The tokenizer has no conditioning.
    conditioning: str = field(default="film", metadata={OPT_IN: True})

    def __post_init__(self):
        if self.position == "rotary":  # the component name for the older switch: one spelling in the stage ids
            self.position, self.rotary = "absolute", True


@dataclass
class TokenizerConfig(StageConfig):
    # latent_penalty: adds weight x mean(relu(|z| - 1)^2) over the pre-quantisation latents z. FSQ bounds z
    # with tanh, so a latent dim driven far past +-1 saturates: its gradient vanishes and it stays on one
    # level for every patch, a dead dim some seeds never leave (docs/variance.md). The hinge pulls such
    # dims back into tanh's live range and is zero inside it. 0 = off (the anchor).
    latent_penalty: float = field(default=0.0, metadata={OPT_IN: True})
    # moving_weight: pixels that differ from the frame before or after weigh 1 + moving_weight in the loss the
    # tokenizer trains on (its val_loss stays the plain mean): the sprites are a few pixels on a static background,
    # and some seeds leave them blurred for hundreds of steps, a plateau the dynamics inherits (docs/variance.md).
    moving_weight: float = field(default=0.0, metadata={OPT_IN: True})


@dataclass
class ActionsConfig(StageConfig):
    blocks: int = 2
    lr: float = 1e-4
    encoder: str = "meanpool_concat"  # a registered `lam_encoder` variant
    variance_floor: float = 0.01  # the latent-variance hinge that keeps actions from collapsing
    variance_weight: float = 100.0
    # Remedies for latent-action collapse (docs/controllability.md). The defaults are
    # the anchor's recipe; all are opt-in, so a config that leaves them off has the anchor's ids and checkpoints.
    # decoder_context: what the LAM decoder sees of the input frames. "first": frame 0 only, the rest
    # masked (the anchor); "all": frames 0..t, causally, as in Genie, so the action only has to explain
    # what the past cannot.
    decoder_context: str = field(default="first", metadata={OPT_IN: True})
    # action_norm: "batch" standardises each transition step's pre-quantisation latents over the
    # batch (running statistics at eval), so every step's 2-level codes split the batch instead of
    # all falling on one side, or encoding only the time step. "whiten" also decorrelates the action
    # dims, so they cannot both learn the same feature (docs/controllability.md).
    action_norm: str = field(default="none", metadata={OPT_IN: True})
    # moving_weight: the pixels that change between frames t and t+1 weigh 1 + moving_weight in the
    # reconstruction the LAM trains on (its val_loss stays the plain mean), so the few pixels an action
    # moves are worth telling apart, not lost among the static background.
    moving_weight: float = field(default=0.0, metadata={OPT_IN: True})
    # entropy_weight: adds weight x (mean entropy of each transition's code - entropy of the batch's mean
    # code distribution), the lookup-free quantiser's entropy term (MAGVIT-v2): every latent action
    # confidently one code, and the codes used evenly, so no code is left for a rare split.
    entropy_weight: float = field(default=0.0, metadata={OPT_IN: True})


@dataclass
class DynamicsConfig(StageConfig):
    blocks: int = 8
    lr: float = 1e-2
    maskgit_steps: int = 8
    temperature: float = 0.0
    # masked_frames: which frames of a training window the MaskGIT mask covers. "all": every frame, one
    # random frame left visible per patch (the anchor); "last": only the last frame, so the model trains
    # as a rollout uses it, predicting a frame from whole context frames and the action into it.
    masked_frames: str = field(default="all", metadata={OPT_IN: True})
    # action_input: a registered `action_input` component, what the dynamics makes of the latent actions
    # before conditioning on them ("latent_actions": as inferred; bench validate's planted fault "blind"
    # zeroes them). Opt-in, so the default stays out of the stage ids and checkpoints.
    action_input: str = field(default="latent_actions", metadata={OPT_IN: True})
    # maskgit_schedule: which masked tokens a MaskGIT round unmasks, and how many: "exponential" (the anchor's,
    # k = 5, the most confident first), "cosine", "halton". Used by rollouts only, so a schedule variant
    # decodes with the baseline's trained dynamics. (maskgit_steps and temperature decode too, but they are part
    # of the golden checkpoints' recorded config, so they stay in the stage id.)
    maskgit_schedule: str = field(default="exponential", metadata={DECODE_ONLY: True})
    # action_injection: how the latent actions enter the dynamics transformer: "norm_conditioning" (the anchor's:
    # they condition every norm) or "prepend_token" (one action token per frame beside the patches, Jasmine's).
    action_injection: str = field(default="norm_conditioning", metadata={OPT_IN: True})


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
    def grid(self) -> int:
        """Patches along each side of a frame."""
        return self.frame_size // self.patch_size

    def block_choices(self, stage: str) -> BlockChoices:
        """The components of the stage's ST-transformers, as its config names them."""
        section = self.stage(stage)
        return BlockChoices(ffn=section.ffn, experts=section.moe_experts, top_k=section.moe_top_k,
                            balance_weight=section.moe_balance_weight, conditioning=section.conditioning,
                            position="rotary" if section.rotary else section.position, grid=self.grid)

    @property
    def patches(self) -> int:
        return self.grid**2

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
        for name in ("frame_size", "patch_size", "window", "latent_dim", "bins", "n_actions"):
            if getattr(self, name) < 1:
                raise WorldbenchError(f"{name} {getattr(self, name)} must be >= 1")
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
        if self.dynamics.maskgit_steps < 1:
            raise WorldbenchError(f"dynamics.maskgit_steps {self.dynamics.maskgit_steps} must be >= 1")
        if not (math.isfinite(self.dynamics.temperature) and self.dynamics.temperature >= 0):
            raise WorldbenchError(f"dynamics.temperature {self.dynamics.temperature} must be a finite number >= 0 "
                                  f"(0 = argmax)")
        if not 1 <= self.rollout.delta_psnr_step <= self.rollout.horizon or self.rollout.clips < 1:
            raise WorldbenchError(
                f"rollout.delta_psnr_step {self.rollout.delta_psnr_step} must lie within rollout.horizon "
                f"{self.rollout.horizon} (and rollout.clips >= 1); lengthen the horizon or move the step"
            )
        if self.actions.decoder_context not in ("first", "all"):
            raise WorldbenchError(
                f"actions.decoder_context {self.actions.decoder_context!r} is not one of: 'first', 'all'")
        for stage, key in (("tokenizer", "moving_weight"), ("actions", "moving_weight"), ("actions", "entropy_weight")):
            value = getattr(self.stage(stage), key)
            if not math.isfinite(value) or value < 0:
                raise WorldbenchError(f"{stage}.{key} {value} must be a finite number >= 0 (0 turns it off)")
        if self.dynamics.masked_frames not in ("all", "last"):
            raise WorldbenchError(
                f"dynamics.masked_frames {self.dynamics.masked_frames!r} is not one of: 'all', 'last'")
        if self.actions.action_norm not in ("none", "batch", "whiten"):
            raise WorldbenchError(
                f"actions.action_norm {self.actions.action_norm!r} is not one of: 'none', 'batch', 'whiten'")
        for name in STAGES:
            stage = self.stage(name)
            for key in ("embed_dim", "heads", "hidden", "blocks", "steps", "batch_size", "log_every",
                        "checkpoint_every", "eval_batches"):
                if getattr(stage, key) < 1:
                    raise WorldbenchError(f"{name}.{key} {getattr(stage, key)} must be >= 1")
            for key in ("lr", "grad_clip"):
                if not math.isfinite(getattr(stage, key)) or getattr(stage, key) <= 0:
                    raise WorldbenchError(f"{name}.{key} {getattr(stage, key)} must be a finite number > 0")
            if not math.isfinite(stage.weight_decay) or stage.weight_decay < 0 or stage.warmup_steps < 0:
                raise WorldbenchError(f"{name}: weight_decay and warmup_steps must be finite and >= 0")
            if stage.embed_dim % stage.heads:
                raise WorldbenchError(
                    f"{name}.embed_dim {stage.embed_dim} is not divisible by {name}.heads {stage.heads}; "
                    f"change one so heads divides embed_dim"
                )
            if not (math.isfinite(stage.ema) and 0 <= stage.ema < 1):
                raise WorldbenchError(f"{name}.ema {stage.ema} must be in [0, 1) (0 turns it off; 0.99 is typical)")
            if not (math.isfinite(stage.init_noise) and 0 <= stage.init_noise <= 0.1):
                raise WorldbenchError(f"{name}.init_noise {stage.init_noise} must be in [0, 0.1] (0 turns it off)")
            if stage.lr_decay not in ("none", "cosine"):
                raise WorldbenchError(f"{name}.lr_decay {stage.lr_decay!r} is not one of: 'none', 'cosine'")
            if stage.rotary and (stage.embed_dim // stage.heads) % 4:
                raise WorldbenchError(
                    f"{name}.rotary needs a head dim (embed_dim / heads = {stage.embed_dim // stage.heads}) "
                    f"that is a multiple of 4; change embed_dim or heads, or set {name}.rotary = false"
                )
            try:
                position_code_split(stage.embed_dim)
            except WorldbenchError as err:
                raise WorldbenchError(f"{name}.{err}") from None
            check_components(name, stage)
            if stage.checkpoint_every % stage.log_every:
                raise WorldbenchError(
                    f"{name}.checkpoint_every {stage.checkpoint_every} is not a multiple of "
                    f"{name}.log_every {stage.log_every}; checkpoints are written at log points"
                )
        return self


def check_components(name: str, stage: StageConfig) -> None:
    """The component options' ranges (the names themselves are checked against the registry where it is known)."""
    if stage.moe_experts < 1 or not 1 <= stage.moe_top_k <= stage.moe_experts:
        raise WorldbenchError(f"{name}.moe_top_k {stage.moe_top_k} must be between 1 and {name}.moe_experts "
                              f"{stage.moe_experts} (experts >= 1); e.g. moe_experts = 4, moe_top_k = 2")
    if not (math.isfinite(stage.moe_balance_weight) and stage.moe_balance_weight >= 0):
        raise WorldbenchError(f"{name}.moe_balance_weight {stage.moe_balance_weight} must be a finite number >= 0")
    if stage.rotary and stage.position != "absolute":
        raise WorldbenchError(f"{name}: rotary = true and position = {stage.position!r} are two position codes; "
                              f"set position = \"rotary\" (or rotary = false)")
    if name == "tokenizer" and stage.conditioning != "film":
        raise WorldbenchError(f"tokenizer.conditioning {stage.conditioning!r}: the tokenizer is not conditioned on "
                              f"actions; set it on actions or dynamics")
