"""Every KPI worldbench records: its one definition, and the default rule the gate judges it by.

Rules (direction, scale, margin, blocking) can be overridden per KPI in bench.toml [kpis."name"].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.stats import SMOOTHING_FRACTION, smoothed_loss
from worldmodel.config import STAGES


@dataclass(frozen=True)
class KpiDefinition:
    name: str
    description: str
    direction: str = "lower"  # which way is better
    scale: str = "log"  # log: judged as ratios; linear: as differences
    margin: float = 0.10  # how much worse is still acceptable (fraction for log, amount for linear)
    blocking: bool = False
    # quality | controllability: what the model learned, evidence that a planted fault was caught (bench validate);
    # timing: depends on the machine's load, not reproducible bit for bit; regulariser, cost, data: neither.
    role: str = "quality"
    needs_actions: bool = False  # only measured on datasets with ground-truth actions; blocks only there

    @property
    def timing(self) -> bool:
        return self.role == "timing"

    @property
    def evidence(self) -> bool:
        """Whether a regression of this KPI shows a broken model (not a slower machine or a regulariser)."""
        return self.role in ("quality", "controllability")


def _stage_kpis(stage: str) -> list[KpiDefinition]:
    return [
        KpiDefinition(f"{stage}.final_loss", f"mean of the logged train losses over the last {SMOOTHING_FRACTION:.0%} "
                      "of the budget (the smoothed loss at the last step)"),
        KpiDefinition(f"{stage}.val_loss", "the stage's task loss on the val split (no regularisers)", blocking=True),
        KpiDefinition(f"{stage}.steps_to_target", "first logged step from which the train loss, smoothed by a "
                      f"trailing mean over {SMOOTHING_FRACTION:.0%} of the budget, stays <= target (censored if never)",
                      margin=0.25),
        KpiDefinition(f"{stage}.it_per_s", "median steady-state training steps/s", "higher", margin=0.10,
                      role="timing"),
        KpiDefinition(f"{stage}.wall_s", "training wall time, seconds", margin=0.10, role="timing"),
        KpiDefinition(f"{stage}.peak_rss_mb", "peak resident memory of the run's process, MB", margin=0.10,
                      role="timing"),
        KpiDefinition(f"{stage}.params", "trainable parameters", "lower", "log", 0.10, role="cost"),
    ]


KPIS: dict[str, KpiDefinition] = {k.name: k for k in [
    *(kpi for stage in STAGES for kpi in _stage_kpis(stage)),
    KpiDefinition("tokenizer.val_mse", "reconstruction MSE on val, pixels in [0, 1]"),
    KpiDefinition("tokenizer.val_psnr", "reconstruction PSNR on val, dB", "higher", "linear", 0.5),
    KpiDefinition("tokenizer.val_moving_psnr", "reconstruction PSNR on val, dB, over only the pixels that change "
                  "between consecutive ground-truth frames (the moving sprites)", "higher", "linear", 0.5),
    KpiDefinition("tokenizer.codebook_usage", "fraction of codes used on val", "higher", "linear", 0.05),
    KpiDefinition("tokenizer.codebook_perplexity", "perplexity of the code distribution on val", "higher"),
    KpiDefinition("actions.codebook_usage", "fraction of latent actions used on val", "higher", "linear", 0.10),
    KpiDefinition("actions.codebook_perplexity", "perplexity of the latent actions on val", "higher"),
    KpiDefinition("actions.variance_penalty", "the LAM's variance hinge on val, max(0, floor - batch variance of "
                  "the pre-quantisation latents), unweighted; not part of actions.val_loss", "lower", "linear", 0.001,
                  role="regulariser"),
    KpiDefinition("actions.encoder_variance", "batch variance of the pre-quantisation action latents", "higher"),
    KpiDefinition("actions.decoder_variance", "variance of the LAM decoder's prediction across actions", "higher"),
    # The controllability KPI: a LAM that stops encoding the true actions must not PASS.
    KpiDefinition("actions.nmi", "NMI of latent vs ground-truth actions", "higher", "linear", 0.05, blocking=True,
                  role="controllability", needs_actions=True),
    KpiDefinition("actions.majority_accuracy", "accuracy of latent -> majority true action", "higher", "linear",
                  0.05, role="controllability", needs_actions=True),
    KpiDefinition("dynamics.val_token_accuracy", "masked-token accuracy on val", "higher", "linear", 0.02),
    KpiDefinition("rollout.ar_mse", "autoregressive rollout MSE (own predictions fed back)", blocking=True),
    KpiDefinition("rollout.tf_mse", "teacher-forced rollout MSE", blocking=True),
    KpiDefinition("rollout.ar_psnr", "autoregressive rollout PSNR, dB", "higher", "linear", 0.5),
    KpiDefinition("rollout.tf_psnr", "teacher-forced rollout PSNR, dB", "higher", "linear", 0.5),
    KpiDefinition("rollout.ar_ssim", "autoregressive rollout SSIM", "higher", "linear", 0.02),
    KpiDefinition("rollout.copy_last_mse", "MSE of repeating the last context frame (data property)", role="data"),
    KpiDefinition("rollout.delta_psnr", "Genie's Delta_t PSNR at t = 4: LAM actions vs random actions",
                  "higher", "linear", 0.5, role="controllability"),
]}

# Steps-to-target is computed at compare time from the curves, against a target that may
# depend on the baseline's runs, so it is never stored per run.
COMPARE_TIME_KPIS = {f"{stage}.steps_to_target" for stage in STAGES}


def final_loss(steps: list[int], losses: list[float]) -> float:
    """Mean of the logged train losses over the trailing window of harness.stats.smoothed_loss at the last
    step, so a run with final_loss <= target always reaches the target (harness.stats.steps_to_target)."""
    return float(smoothed_loss(np.array(steps), np.array(losses))[-1])


def steady_rate(rates: list[float]) -> float:
    """Median step rate with the first log interval (warm-up) dropped when there is more than one."""
    return float(np.median(rates[1:] if len(rates) > 1 else rates))


def stage_kpis(stage: str, curve: list[dict], metrics: dict[str, float], params: int, wall_s: float,
               peak_rss_mb: float) -> dict[str, float]:
    """The per-run KPIs of one finished stage, from its curve and its evaluation."""
    values = {
        "final_loss": final_loss([row["step"] for row in curve], [row["loss"] for row in curve]),
        "it_per_s": steady_rate([row["it_per_s"] for row in curve]),
        "wall_s": wall_s, "peak_rss_mb": peak_rss_mb, "params": float(params), **metrics,
    }
    return {f"{stage}.{name}": float(value) for name, value in values.items() if f"{stage}.{name}" in KPIS}
