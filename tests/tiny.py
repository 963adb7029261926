"""Small model configs shared by the tests: every stage one block of width 16, a few steps."""
from __future__ import annotations

from worldmodel.config import STAGES, WorldModelConfig


def tiny_config(steps: int = 8, log_every: int = 2, checkpoint_every: int = 4, maskgit_steps: int = 2,
                encoder: str = "meanpool_concat", **stage_overrides) -> WorldModelConfig:
    """A 16x16 three-stage config that trains in a blink; `stage_overrides` apply to every stage."""
    config = WorldModelConfig(frame_size=16)
    config.rollout.clips, config.rollout.horizon = 2, 4
    for name in STAGES:
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


def run_row(spec, status: str = "ok") -> dict:
    """A runs-table row for `spec` as the driver records it, with placeholder provenance."""
    return {"run_id": spec.run_id, "profile": spec.profile, "dataset": spec.dataset, "variant": spec.variant,
            "seed": spec.seed, "status": status, "error": "" if status == "ok" else "boom", "failed_stage": "",
            "diverged_step": -1, "git_commit": "abc", "git_dirty": False, "code_hash": "x", "config_json": "{}",
            "stage_ids_json": "{}", "torch_version": "", "device": "cpu", "precision": "fp32", "cpu_model": "cpu",
            "host": "h", "executor": "local", "started_at": "t0", "finished_at": "t1"}


def record_fabricated(store, spec, kpis: dict[str, float], status: str = "ok", loss_scale: float = 1.0) -> None:
    """Record `spec` as a finished run without training it: its KPI rows, loss curves 1/step x loss_scale over
    ten steps for every stage (ok runs only), and its runs row last, as the driver records."""
    if status == "ok":
        store.append("kpis", [{"run_id": spec.run_id, "kpi": k, "value": v} for k, v in kpis.items()], spec.run_id)
        store.append("curves", [{"run_id": spec.run_id, "stage": stage, "step": step, "metric": "loss",
                                 "value": loss_scale / step} for stage in STAGES for step in range(1, 11)],
                     spec.run_id)
    store.append("runs", [run_row(spec, status)], spec.run_id)
