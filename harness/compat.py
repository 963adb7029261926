"""Backward compatibility: baseline checkpoints written by the base code must still load and run.

The golden files (smoke size, one per stage, baseline variant) ship inside the package, in `harness/golden/`; with
`bench gate --baseline-ref REF` the checkpoints REF's code trained for the baseline arm are checked
too. The check rebuilds each stage's model from the config stored in its checkpoint with the
current code, loads the weights with strict key matching and computes the stage's loss on one
batch of random inputs, which must be finite. Regenerate the golden files deliberately with
`python -m harness.compat write` when a format change is intended.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from harness.store import stage_folder
from harness.types import CompatResult
from worldmodel import stages
from worldmodel.config import STAGES, WorldModelConfig
from worldmodel.errors import WorldbenchError
from worldmodel.train import CHECKPOINT_FORMAT, save_checkpoint

GOLDEN_DIR = Path(__file__).with_name("golden")  # package data: found beside this module when installed too


def check_stage(stage: str, path: Path) -> str | None:
    """None when the checkpoint loads strictly into the current code and runs one batch, else one line why not."""
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
    return "; ".join(problems) or forward_problem(stage, config, model)


def one_batch(stage: str, config: WorldModelConfig, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Random inputs of the stage's loss: frames in [-1, 1], or dynamics codes and +-1 latent actions."""
    steps, size = config.window, config.frame_size
    if stage != "dynamics":
        return (torch.rand(batch, steps, 3, size, size) * 2 - 1,)
    codes = torch.randint(config.codebook_size, (batch, steps, config.patches))
    actions = torch.randint(2, (batch, steps - 1, config.action_dim)).float() * 2 - 1
    return codes, actions


def forward_problem(stage: str, config: WorldModelConfig, model: torch.nn.Module) -> str | None:
    """None when the loaded model's loss on one batch is finite, else one line why not."""
    model.eval()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            loss, _ = model.loss(*one_batch(stage, config))
        except Exception as err:  # noqa: BLE001 - whatever the current code raises on these weights
            return f"a one-batch forward raised {type(err).__name__}: {str(err).splitlines()[0][:160]}"
    return None if bool(torch.isfinite(loss).all()) else f"a one-batch forward gave a non-finite loss ({loss.item()})"


def check_compat(golden_dir: Path = GOLDEN_DIR, trained: dict[str, Path] | None = None,
                 trained_by: str = "") -> CompatResult:
    """The golden checkpoints, plus `trained` (stage -> checkpoint, e.g. the baseline arm's at REF)."""
    checks = [(stage, "golden checkpoint", golden_dir / f"{stage}.pt") for stage in STAGES]
    checks += [(stage, f"checkpoint trained by {trained_by}", path) for stage, path in (trained or {}).items()]
    lines, ok = [], True
    for stage, what, path in checks:
        if not path.exists() and what != "golden checkpoint":  # its stage cache was deleted: nothing to load
            lines.append(f"{stage}: {what} not checked: '{path}' is missing")
            continue
        if not path.exists():
            ok = False
            lines.append(f"{stage}: golden checkpoint {path.name} is missing; run `python -m harness.compat write`")
            continue
        problem = check_stage(stage, path)
        ok = ok and problem is None
        lines.append(f"{stage}: {what} loads with strict keys and runs one batch" if problem is None else
                     f"{stage}: {what} does NOT load into the current code: {problem}")
    return CompatResult(ok, lines)


def write_golden(golden_dir: Path = GOLDEN_DIR) -> None:
    """Train the smoke profile's baseline briefly and keep each stage's weights and config."""
    from harness.matrix import plan_runs
    from harness.worker import execute_run
    from harness.suite import PACKAGED_CONFIG, load_suite

    suite = load_suite(PACKAGED_CONFIG)
    spec = plan_runs(suite, "smoke", "sprite_world", [suite.comparison.baseline], [0])[0]
    with tempfile.TemporaryDirectory() as results:
        record = execute_run(spec, results, threads=1, executor="local")
        if record.run["status"] != "ok":
            raise WorldbenchError(f"golden run failed: {record.run['error']}")
        golden_dir.mkdir(parents=True, exist_ok=True)
        for stage in STAGES:
            payload = torch.load(stage_folder(Path(results) / "cache", stage, spec.stage_ids[stage]) /
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
