"""Every KPI worldbench records: its one definition, and the default rule the gate judges it by.

Rules (direction, scale, margin, blocking, guard) can be overridden per KPI in bench.toml [kpis."name"].

Tiers (harness.types.TIERS): the losses (each stage's val_loss, the rollouts' MSEs) are guards, not blocking:
training is chaotic, so they vary 2-4x between seeds, and even between runs whose initial weights differ by
1e-6; at the gate's 5-8 seeds no interval of theirs is ever inside a 10% margin, so as blocking KPIs they would
make every pull request INCONCLUSIVE. As guards they still FAIL a large regression (docs/variance.md).
"""
from __future__ import annotations

import numpy as np

from harness.curves import SMOOTHING_FRACTION, smoothed_loss
from harness.types import KpiRule
from worldmodel.config import STAGES


def _kpi(name: str, description: str, direction: str = "lower", scale: str = "log", margin: float = 0.10,
         blocking: bool = False, guard: bool = False, role: str = "quality", needs_actions: bool = False) -> KpiRule:
    """One KPI as the table below reads: what it is first, then its rule; informational unless it says blocking
    or guard."""
    return KpiRule(name, direction, scale, margin, blocking, guard, description=description, role=role,
                   needs_actions=needs_actions)


def _stage_kpis(stage: str) -> list[KpiRule]:
    return [
        _kpi(f"{stage}.final_loss", f"mean of the logged train losses over the last {SMOOTHING_FRACTION:.0%} "
             "of the budget (the smoothed loss at the last step)"),
        _kpi(f"{stage}.val_loss", "the stage's task loss on the val split (no regularisers)", guard=True),
        _kpi(f"{stage}.steps_to_target", "first logged step from which the train loss, smoothed by a "
             f"trailing mean over {SMOOTHING_FRACTION:.0%} of the budget, stays <= target (censored if never)",
             margin=0.25),
        _kpi(f"{stage}.it_per_s", "median steady-state training steps/s", "higher", margin=0.10,
             role="timing"),
        _kpi(f"{stage}.wall_s", "training wall time, seconds", margin=0.10, role="timing"),
        _kpi(f"{stage}.peak_rss_mb", "peak resident memory of the run's process, MB", margin=0.10,
             role="timing"),
        _kpi(f"{stage}.params", "trainable parameters", "lower", "log", 0.10, role="cost"),
    ]


def _moe_kpis(stage: str) -> list[KpiRule]:
    """The Mixture-of-Experts feed-forward's routing health (variants/moe.py), over the stage's val evaluation."""
    return [
        _kpi(f"{stage}.moe_load_cv", "coefficient of variation of the experts' shares of the routed tokens on val, "
             "averaged over the MoE layers (0 = an even load)", "lower", "linear", 0.10, role="regulariser"),
        _kpi(f"{stage}.moe_utilisation", "share of the experts that receive any token on val, averaged over the "
             "MoE layers", "higher", "linear", 0.05, role="regulariser"),
    ]


KPIS: dict[str, KpiRule] = {k.name: k for k in [
    *(kpi for stage in STAGES for kpi in _stage_kpis(stage)),
    _kpi("tokenizer.val_mse", "reconstruction MSE on val, pixels in [0, 1]"),
    _kpi("tokenizer.val_psnr", "reconstruction PSNR on val, dB", "higher", "linear", 0.5),
    _kpi("tokenizer.val_moving_psnr", "reconstruction PSNR on val, dB, over only the pixels that change "
         "between consecutive ground-truth frames (the moving sprites)", "higher", "linear", 0.5),
    _kpi("tokenizer.codebook_usage", "fraction of codes used on val", "higher", "linear", 0.05),
    _kpi("tokenizer.codebook_perplexity", "perplexity of the code distribution on val", "higher"),
    _kpi("actions.codebook_usage", "fraction of latent actions used on val", "higher", "linear", 0.10),
    _kpi("actions.codebook_perplexity", "perplexity of the latent actions on val", "higher"),
    _kpi("actions.variance_penalty", "the LAM's variance hinge on val, max(0, floor - batch variance of "
         "the pre-quantisation latents), unweighted; not part of actions.val_loss", "lower", "linear", 0.001,
         role="regulariser"),
    _kpi("actions.entropy_penalty", "the LAM's code-entropy term on val, mean entropy of each transition's "
         "soft code minus the entropy of the batch's mean code, nats, unweighted; not part of actions.val_loss",
         "lower", "linear", 0.05, role="regulariser"),
    _kpi("actions.encoder_variance", "batch variance of the pre-quantisation action latents", "higher"),
    _kpi("actions.decoder_variance", "variance of the LAM decoder's prediction across actions", "higher"),
    # Informational: with more latent codes than true actions (8 for 4), NMI penalises a harmless split of one
    # action over two codes; majority accuracy does not.
    _kpi("actions.nmi", "NMI of latent vs ground-truth actions", "higher", "linear", 0.05,
         role="controllability", needs_actions=True),
    # The controllability KPI: a LAM that stops encoding the true actions must not PASS.
    _kpi("actions.majority_accuracy", "accuracy of latent -> majority true action", "higher", "linear",
         0.05, blocking=True, role="controllability", needs_actions=True),
    _kpi("dynamics.val_token_accuracy", "masked-token accuracy on val", "higher", "linear", 0.02),
    _kpi("rollout.ar_mse", "autoregressive rollout MSE (own predictions fed back)", guard=True),
    _kpi("rollout.tf_mse", "teacher-forced rollout MSE", guard=True),
    _kpi("rollout.ar_psnr", "autoregressive rollout PSNR, dB", "higher", "linear", 0.5),
    _kpi("rollout.tf_psnr", "teacher-forced rollout PSNR, dB", "higher", "linear", 0.5),
    _kpi("rollout.ar_ssim", "autoregressive rollout SSIM", "higher", "linear", 0.02),
    _kpi("rollout.copy_last_mse", "MSE of repeating the last context frame (data property)", role="data"),
    _kpi("rollout.delta_psnr", "Genie's Delta_t PSNR at t = 4: LAM actions vs random actions",
         "higher", "linear", 0.5, role="controllability"),
    # Guard: the autoregressive response compounds over the horizon and varies about 0.4 (log) between seeds.
    _kpi("rollout.action_response", "MSE between the autoregressive rollouts under the LAM's actions "
         "and under random actions: how much the predictions depend on the actions (0 = action-blind)",
         "higher", "log", 0.5, guard=True, role="controllability"),
    # Blocking: a dynamics that stops reading its actions, or a LAM whose actions stop meaning anything, must not
    # PASS (bench validate's fault_dynamics_blind, fault_lam_blind). One step from true context it varies about
    # 0.1 (log) between seeds, so a 25% drop is resolved at 5 seeds (docs/variance.md).
    _kpi("rollout.tf_action_response", "MSE between the teacher-forced predictions under the LAM's actions and "
         "under the same actions shuffled across clips and steps: how much the next frame depends on the action "
         "(0 = action-blind)", "higher", "log", 1 / 3, blocking=True, role="controllability"),
    # A component's own KPIs (worldmodel/auxiliary.py), in whichever stage uses it; NaN in a stage without it.
    *(kpi for stage in STAGES for kpi in _moe_kpis(stage)),
]}

# Steps-to-target is computed at compare time from the curves, against a target that may
# depend on the baseline's runs, so it is never stored per run.
COMPARE_TIME_KPIS = {f"{stage}.steps_to_target" for stage in STAGES}


def every_run_kpi(measured: dict[str, float]) -> dict[str, float]:
    """Every KPI a finished run records, NaN where it was not measured (an evaluation that broke, a dataset
    without true actions): a missing row would shrink the sample unseen, where NaN is counted as missing."""
    return {name: float(measured.get(name, float("nan"))) for name in KPIS if name not in COMPARE_TIME_KPIS}


def final_loss(steps: list[int], losses: list[float]) -> float:
    """Mean of the logged train losses over the trailing window of harness.curves.smoothed_loss at the last
    step, so a run with final_loss <= target always reaches the target (harness.curves.steps_to_target)."""
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
