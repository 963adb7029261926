"""Training steps/s of each stage at the reference config (pytest-benchmark).

    pytest benchmarks/bench_steps.py --benchmark-only

One step = forward + backward + grad-norm clipping (1.0) + AdamW, batch 16, T = 4, float32, at
64x64 (P = 256 patches per frame) and 32x32 (P = 64). Not collected by the default test run (the
testpath is `tests`). Each benchmark records extra_info["steps_per_s"] (from the fastest round:
the machine is shared, so the best round is the least disturbed) and extra_info["steps_per_s_mean"],
and prints one line per stage. Set WORLDBENCH_ATTENTION=torch to time the pure-PyTorch path.
"""
from __future__ import annotations

import pytest
import torch

from harness.compat import one_batch
from worldmodel import stages
from worldmodel.config import WorldModelConfig
from worldmodel.train import make_optimizer, update

BATCH = 16
ROUNDS = {64: 3, 32: 8}  # 64x64 steps take about a second each


def make_step(stage: str, frame_size: int):
    torch.manual_seed(0)
    config = WorldModelConfig(frame_size=frame_size).validate()
    batch = one_batch(stage, config, BATCH)
    model = stages.build_model(stage, config)
    model.train()
    optimizer = make_optimizer(model, lr=1e-3, weight_decay=1e-4)

    def step() -> float:
        loss, _ = model.loss(*batch)
        update(model, optimizer, loss, grad_clip=1.0)
        return loss.item()

    return step


@pytest.mark.parametrize("frame_size", [64, 32])
@pytest.mark.parametrize("stage", ["tokenizer", "actions", "dynamics"])
def test_training_step(benchmark, capsys, stage, frame_size):
    step = make_step(stage, frame_size)
    benchmark.group = f"train step {frame_size}x{frame_size}"
    benchmark.extra_info["threads"] = torch.get_num_threads()
    benchmark.pedantic(step, rounds=ROUNDS[frame_size], iterations=1, warmup_rounds=1)
    stats = benchmark.stats.stats
    benchmark.extra_info["steps_per_s"] = round(1.0 / stats.min, 3)
    benchmark.extra_info["steps_per_s_mean"] = round(1.0 / stats.mean, 3)
    with capsys.disabled():
        print(f"\n{stage:>9} {frame_size}x{frame_size}: {1.0 / stats.min:.2f} steps/s best, "
              f"{1.0 / stats.mean:.2f} mean ({torch.get_num_threads()} threads)")
