"""What the report renderer needs: the statistical decision plus the raw material to show it.

Everything here is plain data.  The renderers never recompute statistics; they only
summarise, format and plot what `harness` measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from harness.stats import Comparison, KpiComparison, KpiRule

__all__ = ["CompatResult", "Comparison", "KpiComparison", "KpiRule", "ReportInput"]

# Column contracts of the data frames (a frame may be empty, but then it still has these columns
# or none at all; the renderers treat "missing column" like "no data").
RUNS_COLUMNS = ("run_id", "variant", "seed", "status", "error")
CURVES_COLUMNS = ("variant", "seed", "stage", "step", "metric", "value")
ROLLOUTS_COLUMNS = ("variant", "seed", "mode", "clip", "horizon_step", "mse", "psnr", "ssim")
SPEED_COLUMNS = ("variant", "stage", "it_per_s", "wall_s")


@dataclass
class CompatResult:
    """Backward-compatibility check: do golden checkpoints still load and behave?"""

    ok: bool
    lines: list[str]  # e.g. "tokenizer: golden checkpoint loads (strict keys)", or the failure line


@dataclass
class ReportInput:
    title: str
    baseline: str  # variant names (untrusted text: escaped wherever shown)
    candidate: str
    descriptions: dict[str, str]  # variant -> free text from the user's config (untrusted)
    comparison: Comparison
    runs: pd.DataFrame  # run_id, variant, seed, status ("ok"/"diverged"/"failed"), error
    curves: pd.DataFrame  # variant, seed, stage, step, metric, value
    rollouts: pd.DataFrame  # variant, seed, mode, clip, horizon_step (1-based), mse, psnr, ssim
    # variant -> {"seed": int, "context": int, "ground_truth": uint8 [clips, context+horizon, H, W, 3],
    #             "predictions": {mode: uint8 [clips, horizon, H, W, 3]},
    #             "reconstructions" (optional): the tokenizer's uint8 [clips, context+horizon, H, W, 3]};
    # same clips and seed for all variants
    frames: dict[str, dict]
    speed: pd.DataFrame  # variant, stage, it_per_s, wall_s (medians over seeds)
    compat: CompatResult | None  # None: not checked
    provenance: list[dict]  # one per run: run_id, variant, seed, git_commit, git_dirty, code_hash, ...
    reproduce_command: str
    profile: str
    notes: list[str] = field(default_factory=list)

    @property
    def variants(self) -> list[str]:
        """Baseline first, then candidate (deduplicated if someone compares a variant to itself)."""
        return list(dict.fromkeys([self.baseline, self.candidate]))
