"""The seed-batched engine (worldmodel/batched.py) trains each seed as the per-seed loop does.

Every comparison runs both engines in float64 on the tiny config (tests/tiny.py), K = 2 seeds, a few
steps, against worldmodel.train.train_stage itself. Why float64 and these tolerances: the two engines
differ only in float rounding (batched matmuls sum in another order; batched mode runs the plain PyTorch
ops), about 1e-16 relative per op in float64. Losses then agree to ~1e-15. Weights agree to ~1e-11:
AdamW divides by sqrt(v) + eps, so a gradient that is pure rounding noise (the attention key bias,
whose true gradient is zero: softmax ignores a shift common to every key) moves its weight by up to
lr * noise / eps ~ 1e-3 * 1e-16 / 1e-8 per step. Any real difference (another batch, init, clip,
learning rate, RNG draw) moves weights by about the learning rate (>= 1e-4 here) per step. In float32
the same rounding noise is ~1e-7 and the key-bias effect reaches ~lr, which would blur that line.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from harness.cli import main
from harness.matrix import plan_runs
from harness.seed_batches import group_specs, pretrain
from harness.store import stage_folder
from harness.suite import load_suite
from tests.tiny import tiny_config, tiny_suite
from worldmodel import stages
from worldmodel.auxiliary import Auxiliary
from worldmodel.batched import clip_grad_norm_per_seed_, initial_model, model_builder, train_seeds
from worldmodel.data import VideoWindows, generate
from worldmodel.train import Placement, load_checkpoint, perturb_initial_weights, train_stage

LOSS_TOL = 1e-12  # float64, see the module docstring (measured: <= 3e-15)
WEIGHT_TOL = 1e-9  # float64 (measured: <= 4e-11)
SEEDS = [0, 1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: a second thread only contends with whatever else runs on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def windows() -> tuple[VideoWindows, VideoWindows]:
    data = generate("sprite_world", 8, 12, 16, seed=0)
    return VideoWindows(data, 4, "train", 0.25), VideoWindows(data, 4, "val", 0.25)


def in_float64(sample):
    return lambda generator: tuple(t.double() if t.is_floating_point() else t for t in sample(generator))


def stage_setup(stage: str, variant: str, train: VideoWindows):
    """(config, the stage's float64 constructor, a float64 sampler): a schedule with warmup and cosine decay."""
    config = tiny_config(steps=6, log_every=1, checkpoint_every=6, warmup_steps=2, lr_decay="cosine")
    if variant == "ema_noise":
        config.stage(stage).ema, config.stage(stage).init_noise = 0.9, 1e-3
    if variant == "ci":  # the ci profile's LAM recipe: whitening (buffers updated in place), all frames seen
        config.actions.action_norm, config.actions.decoder_context = "whiten", "all"
        config.actions.moving_weight, config.actions.entropy_weight = 10.0, 0.01
    if variant == "last":
        config.dynamics.masked_frames = "last"
    if variant == "weighted":  # the tokenizer's opt-in terms: the latent hinge and the moving pixels weighed up
        config.tokenizer.latent_penalty, config.tokenizer.moving_weight = 0.1, 10.0
    config.validate()
    batch_size = config.stage(stage).batch_size
    if stage == "dynamics":  # codes and actions as stages.encode_windows hands them over, here drawn at random
        generator = torch.Generator().manual_seed(5)
        codes = torch.randint(config.codebook_size, (40, config.window, config.patches), generator=generator)
        actions = torch.randint(2, (40, config.window - 1, config.action_dim), generator=generator).double() * 2 - 1

        def sample(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            which = torch.randint(len(codes), (batch_size,), generator=g)
            return codes[which], actions[which]
    else:
        sample = in_float64(stages.sampler(train, batch_size))
    build = model_builder(stage, config)
    return config, lambda: build().double(), sample


def per_seed_runs(stage: str, config, build, sample, tmp_path,
                  seeds: list[int] = SEEDS) -> list[tuple[nn.Module, list[dict]]]:
    """train_stage, seed by seed, as stages.py calls it: torch.manual_seed(seed) then the constructor."""
    runs = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = build()
        result = train_stage(stage, model, config.stage(stage), sample, tmp_path / f"{stage}-{seed}.pt", "{}", seed)
        runs.append((model, result.curve))
    return runs


def assert_same_checkpoint(theirs: dict, ours: dict) -> None:
    """Both RNG streams equal bit for bit (a resumed run draws on from them), the optimiser's state to WEIGHT_TOL."""
    assert (theirs["step"], theirs["finished"]) == (ours["step"], ours["finished"])
    assert torch.equal(theirs["rng_torch"], ours["rng_torch"])
    assert torch.equal(theirs["rng_sampler"], ours["rng_sampler"])
    assert theirs["optimizer"]["param_groups"] == ours["optimizer"]["param_groups"]
    assert theirs["optimizer"]["state"].keys() == ours["optimizer"]["state"].keys()
    for index, state in theirs["optimizer"]["state"].items():
        for key, value in state.items():
            assert (value.double() - ours["optimizer"]["state"][index][key].double()).abs().max() <= WEIGHT_TOL, key


def assert_same_training(expected: list[tuple[nn.Module, list[dict]]], outcomes) -> None:
    for (model, curve), outcome in zip(expected, outcomes):
        assert outcome.diverged is None
        assert [row["step"] for row in outcome.result.curve] == [row["step"] for row in curve]
        for row, mine in zip(curve, outcome.result.curve):
            assert set(mine) == set(row)
            for key in set(row) - {"step", "it_per_s"}:
                expected = pytest.approx(row[key], rel=LOSS_TOL, abs=LOSS_TOL)
                assert mine[key] == expected, (outcome.seed, row["step"], key)
        theirs, ours = model.state_dict(), outcome.model.state_dict()
        assert theirs.keys() == ours.keys()
        for name, value in theirs.items():
            error = (value.double() - ours[name].double()).abs().max().item()
            assert error <= WEIGHT_TOL, f"seed {outcome.seed} {name}: max |diff| {error:.3g}"


@pytest.mark.parametrize("stage,variant", [("tokenizer", "ema_noise"), ("tokenizer", "weighted"), ("actions", "anchor"),
                                           ("actions", "ci"), ("dynamics", "anchor"), ("dynamics", "last")])
def test_each_seed_trains_as_its_per_seed_run(stage, variant, windows, tmp_path):
    """Losses, extras and final weights (the EMA where on) of both seeds match train_stage, and so do their
    checkpoints; the dynamics rows check that each seed's MaskGIT masks come from its own RNG stream."""
    config, build, sample = stage_setup(stage, variant, windows[0])
    expected = per_seed_runs(stage, config, build, sample, tmp_path)
    outcomes = train_seeds(stage, build, config.stage(stage), SEEDS, sample,
                           checkpoints=[tmp_path / f"batched-{seed}.pt" for seed in SEEDS], config_json="{}")
    assert [o.seed for o in outcomes] == SEEDS
    assert_same_training(expected, outcomes)
    for seed in SEEDS:
        assert_same_checkpoint(load_checkpoint(tmp_path / f"{stage}-{seed}.pt", stage, "{}"),
                               load_checkpoint(tmp_path / f"batched-{seed}.pt", stage, "{}"))


class PenalisedFFN(Auxiliary):
    """A feed-forward with a loss term of its own, as a component brings one (the MoE's balance loss)."""

    def __init__(self, ffn: nn.Module):
        super().__init__()
        self.ffn = ffn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ffn(x)
        if self.training:
            self._loss_terms = {"ffn_penalty": 0.1 * y.pow(2).mean()}
        return y


def test_component_loss_terms_are_trained_on_and_logged(windows, tmp_path):
    """Loss terms a component sets (worldmodel/auxiliary.py) are added to what each seed trains on and logged
    beside its loss, as train_stage does."""
    config, build, sample = stage_setup("tokenizer", "anchor", windows[0])

    def penalised() -> nn.Module:
        model = build()
        model.encoder.blocks[0].ffn = PenalisedFFN(model.encoder.blocks[0].ffn)
        return model

    expected = per_seed_runs("tokenizer", config, penalised, sample, tmp_path)
    outcomes = train_seeds("tokenizer", penalised, config.tokenizer, SEEDS, sample)
    assert "ffn_penalty" in outcomes[0].result.curve[0]
    assert_same_training(expected, outcomes)


@pytest.mark.parametrize("init_noise", [0.0, 1e-3])
def test_init_is_the_one_stages_py_builds(init_noise, windows, monkeypatch):
    """initial_model (what train_seeds stacks) equals the model stages.run_tokenizer hands to train_stage,
    then perturbed as train_stage perturbs it."""
    config = tiny_config(init_noise=init_noise)
    built = {}

    class Captured(Exception):
        pass

    def capture(stage, model, *args, **kwargs):
        built[stage] = {name: value.clone() for name, value in model.state_dict().items()}
        raise Captured

    monkeypatch.setattr(stages, "train_stage", capture)
    for seed in SEEDS:
        with pytest.raises(Captured):
            stages.run_tokenizer(config, *windows, None, seed)
        reference = stages.build_model("tokenizer", config)
        reference.load_state_dict(built["tokenizer"])
        if init_noise:
            perturb_initial_weights(reference, init_noise, seed)
        ours = initial_model(model_builder("tokenizer", config), config.tokenizer, seed)
        for name, value in reference.state_dict().items():
            assert torch.equal(ours.state_dict()[name], value), (seed, name)


def test_clipping_is_per_seed_unit():
    """Each slice is scaled by its own norm exactly as clip_grad_norm_ scales one model's gradients."""
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(2, 3, 4, generator=generator, dtype=torch.float64),
             torch.randn(2, 5, generator=generator, dtype=torch.float64)]
    grads[0][0] *= 100  # seed 0's norm ~100, seed 1's ~4
    grads[1][0] *= 100
    expected = [[g[k].clone() for g in grads] for k in range(2)]
    for seed in expected:  # the reference: clip_grad_norm_ on each seed's own tensors
        params = [nn.Parameter(torch.zeros_like(g)) for g in seed]
        for p, g in zip(params, seed):
            p.grad = g
        nn.utils.clip_grad_norm_(params, 10.0)
    got = clip_grad_norm_per_seed_(grads, 10.0)
    assert got[0] > 10.0 > got[1]
    for k in range(2):
        for mine, theirs in zip(grads, expected[k]):
            assert torch.allclose(mine[k], theirs, rtol=1e-14, atol=0)
    assert torch.equal(grads[1][1], expected[1][1])  # the small seed is untouched: scale exactly 1


def test_one_seeds_huge_gradient_leaves_the_other_unclipped(windows, tmp_path):
    """Seed 0's output layer x100 gives it a gradient norm ~40, seed 1's is ~0.5, the clip 2: seed 0 is
    clipped every step, seed 1 is not. A clip over both seeds together would shrink seed 1's steps."""
    config, build, sample = stage_setup("tokenizer", "anchor", windows[0])
    config.tokenizer.grad_clip = 2.0

    def lopsided() -> nn.Module:
        model = build()
        if torch.initial_seed() == 0:  # train_stage and train_seeds both call torch.manual_seed(seed) first
            with torch.no_grad():
                model.to_pixels.weight.mul_(100)
        return model

    first_norms = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        model = lopsided()
        loss, _ = model.loss(*sample(torch.Generator().manual_seed(seed)))
        loss.backward()
        first_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), math.inf)))
    assert first_norms[0] > 10 * config.tokenizer.grad_clip and first_norms[1] < config.tokenizer.grad_clip / 2
    expected = per_seed_runs("tokenizer", config, lopsided, sample, tmp_path)
    assert_same_training(expected, train_seeds("tokenizer", lopsided, config.tokenizer, SEEDS, sample))


def test_a_diverged_seed_stops_alone(windows, tmp_path):
    """A NaN in seed 0's weights marks seed 0 diverged at step 1; seed 1 trains as it would alone."""
    config, build, sample = stage_setup("tokenizer", "anchor", windows[0])

    def broken() -> nn.Module:
        model = build()
        if torch.initial_seed() == 0:
            with torch.no_grad():
                model.to_pixels.bias.fill_(math.nan)
        return model

    outcomes = train_seeds("tokenizer", broken, config.tokenizer, SEEDS, sample)
    assert outcomes[0].diverged is not None and outcomes[0].diverged.step == 1 and outcomes[0].result.curve == []
    assert_same_training(per_seed_runs("tokenizer", config, broken, sample, tmp_path, SEEDS[1:]), outcomes[1:])


def test_checkpoints_resume_and_feed_the_per_seed_stage(windows, tmp_path):
    """Per-seed checkpoints: a killed batched run resumes to the uninterrupted result, and stages.run_tokenizer
    reads a finished one as its own (no retraining, same weights, evaluation as usual)."""
    config = tiny_config(steps=6, log_every=2, checkpoint_every=2)
    stage, sample = config.tokenizer, stages.sampler(windows[0], config.tokenizer.batch_size)
    config_json = stages.stage_config_json(config, "tokenizer")
    build = model_builder("tokenizer", config)
    whole = train_seeds("tokenizer", build, stage, SEEDS, sample, checkpoints=[tmp_path / f"a{s}.pt" for s in SEEDS],
                        config_json=config_json)

    class Killed(Exception):
        pass

    def kill(step: int, total: int, loss: float) -> None:
        if step == 4:
            raise Killed

    paths = [tmp_path / f"b{s}.pt" for s in SEEDS]
    with pytest.raises(Killed):
        train_seeds("tokenizer", build, stage, SEEDS, sample, checkpoints=paths, config_json=config_json,
                    progress=[None, kill])
    resumed = train_seeds("tokenizer", build, stage, SEEDS, sample, checkpoints=paths, config_json=config_json)
    for a, b in zip(whole, resumed):
        assert [r["loss"] for r in a.result.curve] == [r["loss"] for r in b.result.curve]
        assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())

    for k, seed in enumerate(SEEDS):
        model, output = stages.run_tokenizer(config, *windows, paths[k], seed)
        assert [r["loss"] for r in output.train.curve] == [r["loss"] for r in whole[k].result.curve]
        assert all(torch.equal(v, model.state_dict()[name]) for name, v in whole[k].model.state_dict().items())
        assert math.isfinite(output.metrics["val_loss"])


# --------------------------------------------------------------------------- in the harness: bench run --seed-batch

TINY = tiny_suite("tiny", tokenizer_steps=8, actions_steps=8, dynamics_steps=8) + """
[variants.moe]
description = "a Mixture-of-Experts dynamics: its routing has no vmap rule"
components = { lam_encoder = "meanpool_concat", ffn = "moe" }
"""


DIVERGING = """
[variants.diverging]
description = "a LAM learning rate no model survives"
components = { lam_encoder = "meanpool_concat" }
overrides = { "actions.lr" = 1e30 }
[variants.diverging_token]
description = "the same LAM, another dynamics"
components = { lam_encoder = "meanpool_concat", action_injection = "prepend_token" }
overrides = { "actions.lr" = 1e30 }
"""


def recorded(results: Path) -> pd.DataFrame:
    """(variant, seed, kpi) -> value, with each run's device column."""
    runs, kpis = (pd.read_parquet(results / "store" / table) for table in ("runs", "kpis"))
    return kpis.merge(runs[["run_id", "variant", "seed", "status", "device"]], on="run_id")


def test_bench_run_trains_a_variants_seeds_together_and_records_them_as_its_own_runs(tmp_path):
    """Two variants sharing the tokenizer, two seeds each: the first group trains the tokenizers and its LAMs and
    dynamics batched, the second finds the tokenizers finished and batches its own LAMs and dynamics. Every run is
    recorded as the per-seed path records it, with the same numbers up to float rounding, and says it was batched."""
    suite = tmp_path / "bench.toml"
    suite.write_text(TINY)
    common = ["run", "--config", str(suite), "--profile", "tiny", "--variants", "meanpool_concat,query_pool",
              "--seeds", "0-1", "--jobs", "1", "--quiet"]
    assert main(common + ["--seed-batch", "2", "--results", str(tmp_path / "batched")]) == 0
    assert main(common + ["--results", str(tmp_path / "per_seed")]) == 0
    together, alone = recorded(tmp_path / "batched"), recorded(tmp_path / "per_seed")
    assert set(together["status"]) == {"ok"} and together["device"].str.endswith(", seed-batched x2").all()
    assert not alone["device"].str.contains("seed-batched").any()
    keys = ["variant", "seed", "kpi"]
    both = together.merge(alone, on=keys, suffixes=("_batched", "_per_seed"))
    assert len(both) == len(alone) == len(together)
    for kpi in ("tokenizer.val_loss", "actions.val_loss", "dynamics.val_loss", "rollout.tf_mse"):
        pair = both[both["kpi"] == kpi]
        assert np.allclose(pair["value_batched"], pair["value_per_seed"], rtol=1e-3), pair


def test_a_variant_the_engine_cannot_batch_is_refused_before_anything_is_written(tmp_path, capsys):
    suite = tmp_path / "bench.toml"
    suite.write_text(TINY)
    code = main(["run", "--config", str(suite), "--profile", "tiny", "--variants", "moe", "--seeds", "0-1",
                 "--seed-batch", "2", "--results", str(tmp_path / "r"), "--quiet"])
    error = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "r").exists()
    assert error.count("\n") == 1 and error.startswith("error: variant moe: dynamics: ") and "(drop --seed-batch)" in error


def test_a_group_waits_for_and_builds_on_another_groups_finished_stages(tmp_path):
    """Two groups sharing the tokenizer, as two workers run them: while the first has trained its stages but
    evaluated none (no output.json yet), the second takes the finished tokenizers as done, trains none of
    them, and batches its own LAMs and dynamics on them."""
    suite = tmp_path / "bench.toml"
    suite.write_text(TINY)
    specs = plan_runs(load_suite(suite), "tiny", "sprite_world", ["meanpool_concat", "query_pool"], [0, 1])
    first, second = group_specs(specs, 2)
    assert [spec.variant for spec in first] == ["meanpool_concat"] * 2 and [s.seed for s in second] == [0, 1]
    cache = tmp_path / "results" / "cache"
    diverged, trained = {}, set()
    pretrain(first, cache, Placement(), None, diverged, trained)
    tokenizers = [stage_folder(cache, "tokenizer", spec.stage_ids["tokenizer"]) / "checkpoint.pt" for spec in first]
    before = [path.stat().st_mtime_ns for path in tokenizers]
    assert not any((path.parent / "output.json").exists() for path in tokenizers)
    pretrain(second, cache, Placement(), None, diverged, trained)
    assert [path.stat().st_mtime_ns for path in tokenizers] == before and not diverged
    assert trained == {spec.run_id for spec in specs}
    for spec in second:
        for stage in ("actions", "dynamics"):
            assert load_checkpoint(stage_folder(cache, stage, spec.stage_ids[stage]) / "checkpoint.pt", stage,
                                   stages.stage_config_json(spec.config, stage))["finished"]


def test_a_stopped_group_resumes_together_to_the_uninterrupted_result(tmp_path):
    """A group stopped in the middle of its LAMs (after their checkpoint at step 8) resumes them, batched, from
    that step on the next call: every stage's weights and curve end as an uninterrupted group's."""
    suite = tmp_path / "bench.toml"
    suite.write_text(tiny_suite("tiny", tokenizer_steps=16, actions_steps=16, dynamics_steps=16))
    specs = plan_runs(load_suite(suite), "tiny", "sprite_world", ["meanpool_concat"], [0, 1])
    whole, cut = tmp_path / "whole" / "cache", tmp_path / "cut" / "cache"
    pretrain(specs, whole, Placement(), None, {}, set())

    class Stopped(Exception):
        pass

    def stop(run_id: str, stage: str, step: int, total: int, loss: float) -> None:
        if stage == "actions" and step == 12:
            raise Stopped

    with pytest.raises(Stopped):
        pretrain(specs, cut, Placement(), stop, {}, set())
    stopped = stage_folder(cut, "actions", specs[0].stage_ids["actions"]) / "checkpoint.pt"
    config_json = stages.stage_config_json(specs[0].config, "actions")
    assert load_checkpoint(stopped, "actions", config_json)["step"] == 8
    trained = set()
    pretrain(specs, cut, Placement(), None, {}, trained)
    assert trained == {spec.run_id for spec in specs}  # the LAMs resumed together, the dynamics trained together
    for spec in specs:
        for stage in ("tokenizer", "actions", "dynamics"):
            a, b = (load_checkpoint(stage_folder(cache, stage, spec.stage_ids[stage]) / "checkpoint.pt", stage,
                                    stages.stage_config_json(spec.config, stage)) for cache in (whole, cut))
            losses = [[row["loss"] for row in json.loads(payload["curve"])] for payload in (a, b)]
            assert a["finished"] and b["finished"] and losses[0] == losses[1], (spec.seed, stage)
            assert all(torch.equal(value, b["model"][name]) for name, value in a["model"].items()), (spec.seed, stage)


@pytest.mark.parametrize("first, then", [(["--seed-batch", "2"], []), ([], ["--seed-batch", "2"])],
                         ids=["batched-then-per-seed", "per-seed-then-batched"])
def test_a_diverged_stage_is_diverged_for_every_run_that_shares_it(tmp_path, first, then):
    """Two seeds' LAMs diverge; the runs of another variant sharing those LAMs, run next by the other path, are
    diverged at the same step without training them again (the stage folders hold only the record)."""
    suite = tmp_path / "bench.toml"
    suite.write_text(TINY + DIVERGING)
    common = ["run", "--config", str(suite), "--profile", "tiny", "--seeds", "0-1", "--results",
              str(tmp_path / "r"), "--quiet"]
    assert main([*common, "--variants", "diverging", *first]) == 4
    specs = plan_runs(load_suite(suite), "tiny", "sprite_world", ["diverging", "diverging_token"], [0, 1])
    folders = {stage_folder(tmp_path / "r" / "cache", "actions", spec.stage_ids["actions"]) for spec in specs}
    assert len(folders) == 2 and all(sorted(p.name for p in folder.iterdir()) == ["diverged.json"]
                                     for folder in folders)
    before = {folder: (folder / "diverged.json").stat().st_mtime_ns for folder in folders}
    assert main([*common, "--variants", "diverging_token", *then]) == 4
    assert {folder: (folder / "diverged.json").stat().st_mtime_ns for folder in folders} == before
    assert all(sorted(p.name for p in folder.iterdir()) == ["diverged.json"] for folder in folders)
    runs = pd.read_parquet(tmp_path / "r" / "store" / "runs")
    assert set(runs["status"]) == {"diverged"} and set(runs["failed_stage"]) == {"actions"}
    steps = runs.set_index(["variant", "seed"])["diverged_step"]
    assert [steps["diverging", seed] for seed in (0, 1)] == [steps["diverging_token", seed] for seed in (0, 1)]


@pytest.mark.parametrize("then", [[], ["--seed-batch", "2"]], ids=["per-seed", "batched"])
def test_a_finished_stage_whose_checkpoint_is_gone_is_trained_again(tmp_path, then):
    """The shared tokenizers' checkpoints deleted after a run (their output.json left, as a partial copy of the
    cache leaves them): the next variant's runs train those tokenizers again instead of failing, to the same
    numbers."""
    suite = tmp_path / "bench.toml"
    suite.write_text(TINY)
    common = ["run", "--config", str(suite), "--profile", "tiny", "--seeds", "0-1", "--results",
              str(tmp_path / "r"), "--jobs", "1", "--quiet"]
    assert main([*common, "--variants", "meanpool_concat"]) == 0
    specs = plan_runs(load_suite(suite), "tiny", "sprite_world", ["meanpool_concat", "query_pool"], [0, 1])
    tokenizers = {stage_folder(tmp_path / "r" / "cache", "tokenizer", spec.stage_ids["tokenizer"]) for spec in specs}
    assert len(tokenizers) == 2
    for folder in tokenizers:
        (folder / "checkpoint.pt").unlink()
    assert main([*common, "--variants", "query_pool", *then]) == 0
    assert all((folder / "checkpoint.pt").exists() and (folder / "output.json").exists() for folder in tokenizers)
    runs = recorded(tmp_path / "r")
    assert set(runs["status"]) == {"ok"}
    loss = runs[runs["kpi"] == "tokenizer.val_loss"].set_index(["variant", "seed"])["value"]
    assert np.allclose([loss["query_pool", seed] for seed in (0, 1)],
                       [loss["meanpool_concat", seed] for seed in (0, 1)], rtol=1e-3)
