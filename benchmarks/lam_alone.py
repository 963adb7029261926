"""The LAM stage alone on a built-in game, for the controllability experiments in docs/controllability.md.

    python benchmarks/lam_alone.py --steps 1000 --seed 0                     # the ci profile's LAM
    python benchmarks/lam_alone.py --steps 1000 --feed true --moves-only     # the decoder's oracle check
    python benchmarks/lam_alone.py --steps 1000 --feed constant --moves-only
    python benchmarks/lam_alone.py --steps 1000 --lam '{"rotary": false}'    # the ci LAM with one switch changed
    python benchmarks/lam_alone.py --steps 1000 --game pong --profile pong   # the pong profile's LAM

--feed encoder trains the LAM as a run does (worldmodel.stages.run_actions, the profile's model config
read from bench.toml) and prints its KPIs and the confusion table of latent codes (rows)
against true actions (columns). --feed true / constant trains the LAM decoder alone, conditioned on the
true action (coded on the same 2-level grid) or on one constant action, and prints its val loss:
if the decoder cannot use even the true actions, no encoder can teach it to. --moves-only drops the
noop, so the four moves and the four codes match one to one. One thread, as a run under --jobs 2.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.suite import Suite, load_suite
from worldmodel import stages
from worldmodel.config import WorldModelConfig
from worldmodel.data import VideoWindows, games, generate
from worldmodel.lam import LatentActionModel
from worldmodel.train import make_optimizer, update

REPO = Path(__file__).resolve().parents[1]


def profile_config(suite: Suite, profile: str, steps: int, frame_size: int) -> WorldModelConfig:
    """A bench.toml profile's model config (its LAM as the baseline trains it), with `steps` LAM steps."""
    config = suite.model_config(profile, "meanpool_concat", frame_size)
    lam = config.actions
    lam.steps, lam.log_every, lam.checkpoint_every = steps, 50, steps
    return config.validate()


def moves_only(policy: callable) -> callable:
    """The sticky-random policy over the four moves only: actions 1..4, never 0 (noop)."""
    return lambda rng, n_steps, n_actions, repeat_prob: 1 + policy(rng, n_steps, n_actions - 1, repeat_prob)


def train_decoder(config: WorldModelConfig, train: VideoWindows, val: VideoWindows, feed: str, seed: int,
                  first_action: int) -> float:
    """Train the LAM decoder on given actions; returns its val reconstruction loss.

    first_action: the smallest true action in the data (1 with --moves-only), coded as code 0.
    """
    torch.manual_seed(seed)
    lam = LatentActionModel(config)
    stage = config.actions
    optimizer = make_optimizer(lam, stage.lr, stage.weight_decay)
    generator = np.random.default_rng(seed)

    def given_actions(actions: torch.Tensor) -> torch.Tensor:
        # true actions -> codes 0..3 on the FSQ grid [B, T-1, A] (a fifth action shares code 3);
        # "constant": code 0 throughout
        codes = actions - first_action if feed == "true" else torch.zeros_like(actions)
        return lam.fsq.from_indices(codes.clamp(0, 3))

    def loss(frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        predicted = lam.decode(frames[:, :-1], given_actions(actions))  # [B, T-1, 3, H, W]
        return F.smooth_l1_loss(predicted, frames[:, 1:])

    lam.train()
    for _ in range(stage.steps):
        update(lam, optimizer, loss(*train.batch(generator.integers(len(train), size=stage.batch_size))),
               stage.grad_clip)
    lam.eval()
    with torch.no_grad():
        return float(loss(*val.batch(np.arange(len(val)))))


@torch.no_grad()
def confusion(lam: LatentActionModel, val: VideoWindows, n_actions: int) -> list[list[int]]:
    """Counts of (latent code, true action) over the val windows: one row per code, one column per action."""
    lam.eval()
    frames, true_actions = val.batch(np.arange(len(val)))
    codes = lam.fsq.to_indices(lam.infer_actions(frames)[1]).flatten()  # [N (T-1)]
    table = np.zeros((n_actions, int(true_actions.max()) + 1), dtype=int)
    np.add.at(table, (codes.numpy(), true_actions.flatten().numpy()), 1)
    return table.tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--profile", default="ci", help="bench.toml profile whose model config to train (ci)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=16, help="frame size (ci: 16)")
    parser.add_argument("--feed", choices=["encoder", "true", "constant"], default="encoder")
    parser.add_argument("--moves-only", action="store_true", help="no noop: the four moves only")
    parser.add_argument("--game", choices=sorted(games.GAMES), default="sprite_world")
    parser.add_argument("--options", default="{}", help='the game\'s options as JSON, e.g. \'{"wrap": false}\'')
    parser.add_argument("--repeat-prob", type=float, default=None,
                        help="sticky actions (default: the built-in dataset's, sprite_world 0.5, pong 0)")
    parser.add_argument("--lam", default="{}", help='LAM settings over the profile\'s, as JSON, e.g. \'{"rotary": true}\'')
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.moves_only:
        games.sticky_random_actions = moves_only(games.sticky_random_actions)
    suite = load_suite(REPO / "bench.toml")
    config = profile_config(suite, args.profile, args.steps, args.size)
    for key, value in json.loads(args.lam).items():
        setattr(config.actions, key, value)
    config.validate()
    # the ci profile's data: 120 episodes of 32 frames of the built-in dataset named like the game
    if args.repeat_prob is None:
        args.repeat_prob = suite.dataset(args.game).repeat_prob
    data = generate(args.game, 120, 32, args.size, seed=0, repeat_prob=args.repeat_prob,
                    options=json.loads(args.options))
    train, val = VideoWindows(data, config.window, "train"), VideoWindows(data, config.window, "val")
    started = time.perf_counter()
    if args.feed == "encoder":
        with tempfile.TemporaryDirectory() as scratch:
            lam, out = stages.run_actions(config, train, val, Path(scratch) / "lam.pt", args.seed)
        result = {name: round(out.metrics[name], 4) for name in
                  ("nmi", "codebook_perplexity", "majority_accuracy", "val_loss") if name in out.metrics}
        result["confusion"] = confusion(lam, val, config.n_actions)
    else:
        result = {"val_loss": round(train_decoder(config, train, val, args.feed, args.seed, int(args.moves_only)), 5)}
    print(json.dumps({**vars(args), **result, "wall_s": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
