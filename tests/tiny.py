"""Small model configs shared by the tests: every stage one block of width 16, a few steps."""
from __future__ import annotations

from worldmodel.config import WorldModelConfig


def tiny_config(steps: int = 8, log_every: int = 2, checkpoint_every: int = 4, maskgit_steps: int = 2,
                encoder: str = "meanpool_concat", **stage_overrides) -> WorldModelConfig:
    """A 16x16 three-stage config that trains in a blink; `stage_overrides` apply to every stage."""
    config = WorldModelConfig(frame_size=16)
    config.rollout.clips, config.rollout.horizon = 2, 4
    for name in ("tokenizer", "actions", "dynamics"):
        stage = config.stage(name)
        stage.embed_dim, stage.heads, stage.hidden, stage.blocks = 16, 4, 32, 1
        stage.steps, stage.batch_size, stage.log_every, stage.eval_batches = steps, 4, log_every, 1
        stage.checkpoint_every = checkpoint_every
        for key, value in stage_overrides.items():
            setattr(stage, key, value)
    config.actions.encoder = encoder
    config.dynamics.maskgit_steps = maskgit_steps
    return config.validate()


def tiny_suite(profile: str, tokenizer_steps: int, actions_steps: int, dynamics_steps: int) -> str:
    """A bench.toml with one profile of tiny stages, for tests that drive the CLI and kill or resume it."""
    stage = "embed_dim = 16, heads = 4, hidden = 32, blocks = 1, batch_size = 8, log_every = 4, " \
            "checkpoint_every = 8, eval_batches = 1"
    return f"""
[profiles.{profile}]
seeds = [0]
data = {{ episodes = 12, episode_len = 16 }}
[profiles.{profile}.model]
frame_size = 16
rollout = {{ clips = 2, horizon = 4 }}
tokenizer = {{ {stage}, steps = {tokenizer_steps} }}
actions = {{ {stage}, steps = {actions_steps} }}
dynamics = {{ {stage}, steps = {dynamics_steps}, maskgit_steps = 2 }}
"""
