"""A ci training step with torch.optim.AdamW(foreach=True) against FlatAdamW, and whether they agree bit for bit.

    python benchmarks/flat_adamw.py                 # the three stages of the ci profile's baseline, one thread
    python benchmarks/flat_adamw.py --rounds 16     # more rounds: the least disturbed one counts

Both optimisers train their own copy of the same model on the same batches, alternating in rounds of 8 steps
in one process (benchmarks/interleaved.py). Prints, per stage, the fastest round's ms per step of each, the
median of the rounds' paired savings, and whether the weights are still identical after every round.
"""
from __future__ import annotations

import torch

from interleaved import STAGES, Arm, ci_config, interleaved
from worldmodel.train import FlatAdamW


def main() -> None:
    args, config = ci_config(__doc__.splitlines()[0], rounds=8)
    arms = {"AdamW": Arm(lambda model: torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01,
                                                         foreach=True)),
            "FlatAdamW": Arm(lambda model: FlatAdamW(model.parameters(), lr=1e-3, weight_decay=0.01))}
    for stage in STAGES:
        timing = interleaved(stage, config, arms, args.rounds)
        print(f"{stage:<10} AdamW {timing.best_ms['AdamW']:6.1f} ms/step  FlatAdamW {timing.best_ms['FlatAdamW']:6.1f} "
              f"ms/step  median saving {100 * (1 - timing.median_ratio):+5.1f}%  identical weights: {timing.identical}")


if __name__ == "__main__":
    main()
