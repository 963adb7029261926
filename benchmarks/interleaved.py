"""Two ways of running the same ci training steps, timed in interleaved rounds and checked bit for bit.

Used by flat_adamw.py (two optimisers) and kernels_ab.py (two kernel builds). Both arms train their own copy
of the same model on the same batches (the global RNG is re-seeded before each step, so the dynamics masks
agree too), alternating in rounds of 8 steps in one process, so a slower minute of a shared machine slows both.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from harness.compat import one_batch
from harness.suite import load_suite
from worldmodel import stages
from worldmodel.config import WorldModelConfig
from worldmodel.train import update

STEPS_PER_ROUND = 8
STAGES = ("tokenizer", "actions", "dynamics")


@dataclass
class Arm:
    optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer]
    enter: Callable[[], None] = lambda: None  # called before each of the arm's rounds


@dataclass
class Timing:
    best_ms: dict[str, float]  # the fastest round's ms per step, per arm
    median_ratio: float  # median over rounds of (second arm's time / first arm's)
    identical: bool  # the arms' weights equal bit for bit after every round


def ci_config(description: str, extra: Callable[[argparse.ArgumentParser], None] = lambda parser: None,
              rounds: int = 12) -> tuple[argparse.Namespace, WorldModelConfig]:
    """Parses --config, --profile, --rounds (and `extra`'s flags); the profile's baseline config; one thread."""
    parser = argparse.ArgumentParser(description=description)
    extra(parser)
    parser.add_argument("--config", default="bench.toml")
    parser.add_argument("--profile", default="ci")
    parser.add_argument("--rounds", type=int, default=rounds)
    args = parser.parse_args()
    torch.set_num_threads(1)
    suite = load_suite(args.config)
    return args, suite.model_config(args.profile, suite.comparison.baseline)


def interleaved(stage: str, config: WorldModelConfig, arms: dict[str, Arm], rounds: int) -> Timing:
    """Times the two arms' training steps of `stage` in alternating rounds."""
    torch.manual_seed(0)
    first = stages.build_model(stage, config)
    models = {name: first if index == 0 else copy.deepcopy(first) for index, name in enumerate(arms)}
    optimizers = {name: arm.optimizer(models[name]) for name, arm in arms.items()}
    inputs = [one_batch(stage, config, getattr(config, stage).batch_size) for _ in range(4)]
    times: dict[str, list[float]] = {name: [] for name in arms}
    identical = True
    for round_index in range(rounds):
        for name, arm in arms.items():
            arm.enter()
            started = time.perf_counter()
            for step in range(STEPS_PER_ROUND):
                torch.manual_seed(round_index * STEPS_PER_ROUND + step)
                loss, _ = models[name].loss(*inputs[step % len(inputs)])
                update(models[name], optimizers[name], loss, 1.0)
            times[name].append((time.perf_counter() - started) / STEPS_PER_ROUND)
        states = [model.state_dict().values() for model in models.values()]
        identical &= all(torch.equal(a, b) for a, b in zip(*states))
    base, other = times.values()
    return Timing(best_ms={name: 1000 * min(values) for name, values in times.items()},
                  median_ratio=statistics.median(b / a for a, b in zip(base, other)), identical=identical)
