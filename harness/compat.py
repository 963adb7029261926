"""Backward compatibility: golden baseline checkpoints written by the base code must still load.

The golden files (smoke size, one per stage, baseline variant) live in `compat/golden/`. The
check rebuilds each stage's model from the config stored in its checkpoint with the current
code and loads the weights with strict key matching. Regenerate them deliberately with
`python -m harness.compat write` when a format change is intended.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from reports.model import CompatResult
from worldmodel import stages
from worldmodel.config import STAGES
from worldmodel.errors import WorldbenchError
from worldmodel.train import CHECKPOINT_FORMAT, save_checkpoint

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "compat" / "golden"


def check_stage(stage: str, path: Path) -> str | None:
    """None when the golden checkpoint loads strictly into the current code, else one line why not."""
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            return f"{path.name} is not a worldbench checkpoint"
        config = stages.config_from_stage_json(stage, payload["config"])
        model = stages.build_model(stage, config)
        result = model.load_state_dict(payload["model"], strict=False)
    except WorldbenchError as err:
        return str(err)
    except Exception as err:  # a checkpoint the current code cannot even read
        return f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
    problems = []
    if result.missing_keys:
        problems.append(f"missing keys {', '.join(result.missing_keys[:4])}")
    if result.unexpected_keys:
        problems.append(f"unexpected keys {', '.join(result.unexpected_keys[:4])}")
    return "; ".join(problems) or None


def check_compat(golden_dir: Path = GOLDEN_DIR) -> CompatResult:
    lines, ok = [], True
    for stage in STAGES:
        path = golden_dir / f"{stage}.pt"
        if not path.exists():
            ok = False
            lines.append(f"{stage}: golden checkpoint {path.name} is missing; run `python -m harness.compat write`")
            continue
        problem = check_stage(stage, path)
        ok = ok and problem is None
        lines.append(f"{stage}: golden checkpoint loads with strict keys" if problem is None else
                     f"{stage}: golden checkpoint does NOT load into the current code: {problem}")
    return CompatResult(ok, lines)


def write_golden(golden_dir: Path = GOLDEN_DIR) -> None:
    """Train the smoke profile's baseline briefly and keep each stage's weights and config."""
    from harness.matrix import plan_runs
    from harness.runner import execute_run
    from harness.suite import load_suite

    suite = load_suite(Path(__file__).resolve().parents[1] / "bench.toml")
    spec = plan_runs(suite, "smoke", "sprite_world", [suite.comparison.baseline], [0])[0]
    with tempfile.TemporaryDirectory() as results:
        record = execute_run(spec, results, threads=1, executor="local")
        if record.run["status"] != "ok":
            raise WorldbenchError(f"golden run failed: {record.run['error']}")
        golden_dir.mkdir(parents=True, exist_ok=True)
        for stage in STAGES:
            payload = torch.load(Path(results) / "cache" / "stages" / f"{stage}-{spec.stage_ids[stage]}" /
                                 "checkpoint.pt", weights_only=True)
            # Weights and config only: the optimiser and RNG state are not part of the format promise.
            keep = ("format", "stage", "config", "step", "finished", "model")
            save_checkpoint(golden_dir / f"{stage}.pt", {k: payload[k] for k in keep})


if __name__ == "__main__":
    if sys.argv[1:] == ["write"]:
        write_golden()
        print(f"wrote golden checkpoints to {GOLDEN_DIR}")
    else:
        result = check_compat()
        print("\n".join(result.lines))
        sys.exit(0 if result.ok else 1)
