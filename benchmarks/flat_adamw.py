"""A ci training step with torch.optim.AdamW(foreach=True) against FlatAdamW, and whether they agree bit for bit.

    python benchmarks/flat_adamw.py                 # the three stages of the ci profile's baseline, one thread
    python benchmarks/flat_adamw.py --rounds 12     # more rounds: the least disturbed one counts

Both optimisers train their own copy of the same model on the same batches (the dynamics on random codes and
actions, with the same masks: the global RNG is re-seeded before each step), alternating in rounds of 8 steps
in one process, so a slower minute of a shared machine slows both. Prints, per stage, the fastest round's
ms per step of each and whether the weights are still identical after every step.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from harness.compat import one_batch
from harness.suite import load_suite
from worldmodel import stages
from worldmodel.train import FlatAdamW, update

STEPS_PER_ROUND = 8


def compare(stage: str, config, rounds: int) -> dict:
    torch.manual_seed(0)
    theirs = stages.build_model(stage, config)
    ours = copy.deepcopy(theirs)
    optimizers = {"torch": torch.optim.AdamW(theirs.parameters(), lr=1e-3, weight_decay=0.01, foreach=True),
                  "flat": FlatAdamW(ours.parameters(), lr=1e-3, weight_decay=0.01)}
    models = {"torch": theirs, "flat": ours}
    inputs = [one_batch(stage, config, getattr(config, stage).batch_size) for _ in range(4)]
    best = {name: float("inf") for name in models}
    identical = True
    for round_index in range(rounds):
        for name, model in models.items():
            started = time.perf_counter()
            for step in range(STEPS_PER_ROUND):
                torch.manual_seed(round_index * STEPS_PER_ROUND + step)  # the same masks for both
                loss, _ = model.loss(*inputs[step % len(inputs)])
                update(model, optimizers[name], loss, 1.0)
            best[name] = min(best[name], (time.perf_counter() - started) / STEPS_PER_ROUND)
        identical &= all(torch.equal(a, b) for a, b in zip(theirs.state_dict().values(), ours.state_dict().values()))
    return {"stage": stage, "torch_ms": 1000 * best["torch"], "flat_ms": 1000 * best["flat"],
            "saving": 1 - best["flat"] / best["torch"], "identical": identical}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="bench.toml")
    parser.add_argument("--profile", default="ci")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    suite = load_suite(args.config)
    config = suite.model_config(args.profile, suite.comparison.baseline)
    for stage in ("tokenizer", "actions", "dynamics"):
        row = compare(stage, config, args.rounds)
        print(f"{row['stage']:<10} AdamW {row['torch_ms']:6.1f} ms/step  FlatAdamW {row['flat_ms']:6.1f} ms/step  "
              f"{100 * row['saving']:+5.1f}% saved  identical weights: {row['identical']}")


if __name__ == "__main__":
    main()
