"""The world model's facts: parameter counts, causality, FSQ, checkpoints, determinism, bad input."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from einops import rearrange

import variants  # noqa: F401  (registers the built-in encoders the tests build)
from worldmodel import metrics, stages
from worldmodel.config import WorldModelConfig
from worldmodel.data import VideoWindows, generate
from worldmodel.dynamics import Dynamics
from worldmodel.errors import WorldbenchError
from worldmodel.fsq import FSQ
from worldmodel.lam import LatentActionModel, code_entropies
from worldmodel.rollout import evaluate_rollouts, infer_clip_actions, rollout_clips, shuffled_actions, to_uint8
from worldmodel.tokenizer import VideoTokenizer
from worldmodel.layers import rotate
from worldmodel.train import FlatAdamW, StageDiverged, learning_rate, load_checkpoint, train_stage

from tiny import tiny_config


class Payload:
    """An arbitrary pickled object: weights_only loading must refuse to build it."""


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def windows():
    data = generate("sprite_world", 8, 12, 16, seed=0)
    return data, VideoWindows(data, 4, "train", 0.25), VideoWindows(data, 4, "val", 0.25)


# ----------------------------------------------------------------------------- fidelity

def test_parameter_counts_match_the_anchor_at_reference_hyperparameters():
    config = WorldModelConfig().validate()
    assert n_params(VideoTokenizer(config)) == 138_821
    lam = LatentActionModel(config)
    assert n_params(lam) == 74_066
    assert n_params(lam.encoder) == 36_046
    assert n_params(Dynamics(config)) == 173_077
    windowed = copy.deepcopy(config)
    windowed.actions.encoder = "windowed_attention"
    assert abs(n_params(LatentActionModel(windowed)) - 78_000) <= 780


def test_temporal_attention_is_causal():
    torch.manual_seed(0)
    config = tiny_config()
    tokenizer = VideoTokenizer(config).eval()
    frames = torch.rand(2, 4, 3, 16, 16) * 2 - 1
    changed = frames.clone()
    changed[:, 2] = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        before, after = tokenizer.encoder(tokenizer.embed(frames)), tokenizer.encoder(tokenizer.embed(changed))
    assert torch.equal(before[:, :2], after[:, :2])
    assert not torch.allclose(before[:, 2:], after[:, 2:])

    dynamics = Dynamics(config).eval()
    latents = dynamics.fsq.from_indices(torch.randint(1024, (2, 4, 16)))
    other = latents.clone()
    other[:, 3] = dynamics.fsq.from_indices(torch.randint(1024, (2, 16)))
    actions, mask = torch.randn(2, 3, 2).sign(), torch.zeros(2, 4, 16, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(dynamics.hidden(latents, actions, mask)[:, :3], dynamics.hidden(other, actions, mask)[:, :3])


@pytest.mark.parametrize("bins", [3, 4])
def test_fsq_round_trip_and_straight_through_gradient(bins):
    fsq = FSQ(dim=5, bins=bins)
    indices = torch.arange(fsq.codebook_size)
    codes = fsq.from_indices(indices)
    assert torch.equal(fsq.to_indices(codes), indices)
    assert codes.min() == -1 and codes.max() == 1
    assert torch.equal(fsq.quantize(torch.atanh(codes.clamp(-0.999, 0.999))), codes)

    z = torch.randn(7, 5, requires_grad=True)
    quantised = fsq.quantize(z)
    assert torch.equal(fsq.to_indices(quantised).lt(fsq.codebook_size), torch.ones(7, dtype=torch.bool))
    quantised.sum().backward()
    # straight-through: the gradient is that of the smooth part, (1 - tanh^2) * half / half
    expected = 1 - torch.tanh(z.detach()) ** 2
    assert torch.allclose(z.grad, expected)


def test_fsq_with_an_odd_level_count_has_a_level_at_zero_that_small_latents_keep():
    small = torch.tensor([[-0.2, -0.05, 0.0, 0.05, 0.2]])  # [1, L]: latents about 0, as a plain patch's may be
    assert torch.equal(FSQ(dim=5, bins=3).quantize(small), torch.zeros(1, 5))
    even = FSQ(dim=5, bins=4).quantize(small)  # even: 0 is a boundary, and the sign picks the level
    assert torch.allclose(even.abs(), torch.full((1, 5), 1 / 3)) and even[0, 0] < 0 < even[0, 4]


UNFILLED = -1  # a code no position can decode to


@pytest.mark.parametrize("rounds", [1, 3, 8])
def test_maskgit_decoding_fills_every_position(windows, monkeypatch, rounds):
    torch.manual_seed(0)
    config = tiny_config()
    dynamics = Dynamics(config).eval()
    context = dynamics.fsq.from_indices(torch.randint(1024, (2, 3, 16)))
    # predict_next starts from torch.zeros codes, and 0 is a valid code: start from a sentinel instead,
    # so a position the decoding never fills shows up.
    zeros = torch.zeros
    monkeypatch.setattr(torch, "zeros", lambda *shape, dtype=None, **kw: zeros(*shape, dtype=dtype, **kw).fill_(
        UNFILLED) if dtype == torch.long else zeros(*shape, dtype=dtype, **kw))
    codes = dynamics.predict_next(context, torch.randn(2, 3, 2).sign(), rounds=rounds)
    assert codes.shape == (2, 16) and codes.dtype == torch.long
    assert not (codes == UNFILLED).any(), f"positions left unfilled: {(codes == UNFILLED).nonzero().tolist()}"
    assert codes.min() >= 0 and codes.max() < 1024


def test_last_frame_masking_trains_on_the_last_frame_from_whole_context_frames():
    torch.manual_seed(0)
    masks = torch.stack([Dynamics.training_mask(8, 4, 16, frames="last") for _ in range(50)])  # [50, B, T, P]
    assert not masks[:, :, :-1].any()  # the context frames stay whole, as in a rollout
    ratios = masks[:, :, -1].float().mean(dim=(1, 2))  # one ratio per batch, U[0.5, 1)
    assert 0.4 < ratios.min() and ratios.max() <= 1.0 and ratios.std() > 0.05
    anchor = torch.stack([Dynamics.training_mask(8, 4, 16) for _ in range(50)])
    assert anchor[:, :, :-1].any() and (~anchor).sum(dim=2).min() >= 1  # "all": every frame, one step kept per patch
    # The dynamics trains with the mask its config names; only masked tokens are scored.
    config = tiny_config()
    config.dynamics.masked_frames = "last"
    dynamics = Dynamics(config)
    scored = []
    dynamics.to_logits.register_forward_hook(lambda module, inputs, output: scored.append(inputs[0].shape[0]))
    indices, actions = torch.randint(1024, (2, 4, 16)), torch.randn(2, 3, 2).sign()
    torch.manual_seed(1)
    dynamics.loss(indices, actions)
    torch.manual_seed(1)
    expected = Dynamics.training_mask(2, 4, 16, frames="last")
    assert scored == [int(expected.sum())] and int(expected.sum()) <= 2 * 16


# ----------------------------------------------------------------------------- training

def sample_frames(train: VideoWindows):
    return stages.sampler(train, 4)


def test_same_seed_gives_identical_losses(tmp_path, windows):
    _, train, _ = windows
    config = tiny_config()
    curves = []
    for attempt in range(2):
        torch.manual_seed(3)
        model = VideoTokenizer(config)
        result = train_stage("tokenizer", model, config.tokenizer, sample_frames(train), tmp_path / f"{attempt}.pt",
                             stages.stage_config_json(config, "tokenizer"), seed=3)
        curves.append([row["loss"] for row in result.curve])
    assert curves[0] == curves[1]


@pytest.mark.parametrize("stage", ["tokenizer", "actions", "dynamics"])
def test_killed_stage_resumes_identically_and_checkpoint_reloads_bit_identically(tmp_path, windows, stage):
    data, train, val = windows
    config = tiny_config()
    tokenizer, lam = VideoTokenizer(config).eval(), LatentActionModel(config).eval()
    run = {"tokenizer": stages.run_tokenizer, "actions": stages.run_actions}.get(stage)

    def go(path, progress=None):
        if run:
            return run(config, train, val, path, 0, progress)
        return stages.run_dynamics(config, train, val, tokenizer, lam, path, 0, progress)

    model, whole = go(tmp_path / "whole.pt")

    class Killed(Exception):
        pass

    def kill_at_step_6(step, total, loss):
        if step == 6:
            raise Killed
    with pytest.raises(Killed):
        go(tmp_path / "resumed.pt", kill_at_step_6)
    assert load_checkpoint(tmp_path / "resumed.pt", stage, stages.stage_config_json(config, stage))["step"] == 4
    resumed_model, resumed = go(tmp_path / "resumed.pt")
    assert [r["loss"] for r in resumed.train.curve] == [r["loss"] for r in whole.train.curve]
    assert resumed.metrics == whole.metrics

    reloaded = stages.load_stage(stage, config, tmp_path / "whole.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key


def test_flat_adamw_steps_exactly_as_torch_adamw(windows):
    """Bit for bit torch.optim.AdamW(foreach=True): with a changing lr, a parameter that never gets a gradient (AdamW
    leaves it and its state alone), one that misses a step (from the next step on the step counts differ, and the
    steps are AdamW's own), state dicts of one kind loaded by the other, into a stepped and a fresh optimiser, and
    state tensors replaced from outside."""
    _, train, _ = windows
    config = tiny_config()
    torch.manual_seed(0)
    ours = VideoTokenizer(config)
    ours.unused = torch.nn.Parameter(torch.ones(3))  # never in the loss: no gradient, as the LAM's mask token
    theirs = copy.deepcopy(ours)
    make = {id(ours): lambda: FlatAdamW(ours.parameters(), lr=1e-2, weight_decay=0.1),
            id(theirs): lambda: torch.optim.AdamW(theirs.parameters(), lr=1e-2, weight_decay=0.1, foreach=True)}
    optimizers = {id(model): make[id(model)]() for model in (ours, theirs)}
    sample = sample_frames(train)
    for step in range(14):
        frames = sample(torch.Generator().manual_seed(step))
        for model in (ours, theirs):
            optimizer = optimizers[id(model)]
            for group in optimizer.param_groups:
                group["lr"] = 1e-2 * (1 - step / 20)
            optimizer.zero_grad(set_to_none=True)
            model.loss(*frames)[0].backward()
            if step == 9:
                model.from_latent.weight.grad = None  # misses this step
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
            optimizer.step()
        assert (optimizers[id(ours)]._flat is not None) == (step < 10)  # flat until the step counts differ
        if step == 2:  # a state tensor replaced from outside (as seed-batching hands each seed its slice back)
            for model in (ours, theirs):
                state = optimizers[id(model)].state
                for parameter in list(state):
                    state[parameter] = {**state[parameter], "exp_avg": state[parameter]["exp_avg"] * 0.5}
        if step == 3:
            saved = {id(model): copy.deepcopy(optimizers[id(model)].state_dict()) for model in (ours, theirs)}
        if step == 5:  # each loads the other's state dict of two steps earlier
            for model, other in ((ours, theirs), (theirs, ours)):
                optimizers[id(model)].load_state_dict(saved[id(other)])
        if step == 7:  # each resumes a fresh optimiser from the other's state dict
            saved = {id(model): copy.deepcopy(optimizers[id(model)].state_dict()) for model in (ours, theirs)}
            for model, other in ((ours, theirs), (theirs, ours)):
                optimizers[id(model)] = make[id(model)]()
                optimizers[id(model)].load_state_dict(saved[id(other)])
        for (name, mine), theirs_value in zip(ours.state_dict().items(), theirs.state_dict().values()):
            assert torch.equal(mine, theirs_value), (step, name)
    state_ours, state_theirs = optimizers[id(ours)].state, optimizers[id(theirs)].state
    assert ours.unused not in state_ours and theirs.unused not in state_theirs
    for mine, other in zip(ours.parameters(), theirs.parameters()):
        if mine in state_ours:
            assert all(torch.equal(state_ours[mine][key], state_theirs[other][key]) for key in state_theirs[other])


def test_nan_loss_is_reported_as_divergence_with_its_step(tmp_path, windows):
    _, train, _ = windows
    config = tiny_config(lr=1e30)  # absurd learning rate: the loss overflows
    model = VideoTokenizer(config)
    with pytest.raises(StageDiverged) as err:
        train_stage("tokenizer", model, config.tokenizer, sample_frames(train), tmp_path / "x.pt",
                    stages.stage_config_json(config, "tokenizer"), seed=0)
    assert err.value.step >= 2


def test_rollouts_score_predicted_frames_and_copy_last(windows):
    data, _, _ = windows
    torch.manual_seed(0)
    config = tiny_config()
    tokenizer, lam, dynamics = VideoTokenizer(config), LatentActionModel(config), Dynamics(config)
    clips = rollout_clips(data, config, 0.25)  # [2, 3 + 4, 3, 16, 16]
    assert clips.shape == (2, 7, 3, 16, 16)
    assert infer_clip_actions(lam, clips, 4).shape == (2, 6, 2)
    result = evaluate_rollouts(tokenizer, lam, dynamics, clips, config)
    assert set(result.scores) == {"ar", "tf", "random", "copy_last"}
    assert result.scores["ar"]["mse"].shape == (2, 4)
    truth = (clips[:, 3:] + 1) / 2
    copy = ((clips[:, 2:3] + 1) / 2).expand_as(truth)
    assert np.isclose(result.kpis["copy_last_mse"], (copy - truth).pow(2).mean().item(), rtol=1e-5)
    assert result.predictions["ar"].shape == (2, 4, 16, 16, 3) and result.predictions["ar"].dtype == np.uint8
    assert result.reconstructions.shape == (2, 7, 16, 16, 3) and result.reconstructions.dtype == np.uint8
    # 7 frames, windows of 4: frames 0-3 from the first window, 4-6 from the last one (frames 3-6).
    assert np.array_equal(result.reconstructions[:, :4], to_uint8(tokenizer(clips[:, :4])[0]))
    assert np.array_equal(result.reconstructions[:, 4:], to_uint8(tokenizer(clips[:, 3:])[0][:, 1:]))


def test_action_responses_are_zero_exactly_when_the_dynamics_ignores_its_actions(windows):
    data, _, _ = windows
    config = tiny_config()
    clips = rollout_clips(data, config, 0.25)
    responses = {}
    for blind in (False, True):
        torch.manual_seed(0)  # the same weights: only the blindness differs
        config.dynamics.action_input = "blind" if blind else "latent_actions"
        tokenizer, lam, dynamics = VideoTokenizer(config), LatentActionModel(config), Dynamics(config)
        for norm in dynamics.modules():  # untrained FiLM starts near 0: give the actions a visible effect
            if hasattr(norm, "to_scale_shift"):
                torch.nn.init.normal_(norm.to_scale_shift.weight, std=1.0)
        result = evaluate_rollouts(tokenizer, lam, dynamics, clips, config)
        ar, random = (result.predictions[mode].astype(np.float64) / 255 for mode in ("ar", "random"))
        assert np.isclose(result.kpis["action_response"], ((ar - random) ** 2).mean(), atol=1e-4)  # uint8 rounding
        responses[blind] = result.kpis["action_response"], result.kpis["tf_action_response"]
    assert responses[True] == (0.0, 0.0) and min(responses[False]) > 1e-4


def test_shuffled_actions_are_the_same_actions_on_other_clips_and_steps():
    actions = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(2, 6, 3)  # [B, N, A], every row distinct
    shuffled = shuffled_actions(actions)
    assert shuffled.shape == actions.shape and not torch.equal(shuffled, actions)
    rows = lambda a: sorted(map(tuple, a.reshape(-1, 3).tolist()))  # noqa: E731
    assert rows(shuffled) == rows(actions)  # a permutation of whole action vectors
    assert torch.equal(shuffled_actions(actions), shuffled)  # one fixed permutation: every variant and seed
    one_code = torch.ones(2, 6, 3)
    assert torch.equal(shuffled_actions(one_code), one_code)  # a LAM with one code: nothing to respond to


def test_moving_psnr_sees_a_small_sprite_that_plain_psnr_hides():
    # A 2x2 sprite moving right over a static 32x32 background; the reconstruction erases it.
    truth = torch.full((1, 4, 3, 32, 32), 0.2)  # [B, T, 3, H, W]
    for t in range(4):
        truth[0, t, :, 6:8, 2 + 3 * t : 4 + 3 * t] = 0.9
    erased = torch.full_like(truth, 0.2)
    moving = metrics.moving_pixels(truth)  # [1, 3, 1, 32, 32]: old and new sprite positions
    assert moving.shape == (1, 3, 1, 32, 32) and moving.sum().item() == 3 * 8
    plain = metrics.psnr_per_frame(erased, truth).mean().item()
    assert plain > 25.0  # the sprite is 0.4% of the pixels: 27 dB
    assert metrics.moving_psnr(erased, truth) < plain - 20.0  # half the moving pixels are the sprite: 6 dB
    assert metrics.moving_psnr(truth, truth) == pytest.approx(100.0)  # exact match: the 100 dB cap
    assert np.isnan(metrics.moving_psnr(erased, erased))  # nothing moves: undefined


def test_lam_val_loss_is_the_reconstruction_without_the_variance_hinge(tmp_path, windows):
    _, train, val = windows
    config = tiny_config(variance_floor=10.0)  # a floor the latents never reach: the hinge dominates the loss
    model = LatentActionModel(config)
    frames, _ = val.batch(np.arange(4))
    loss, extras = model.loss(frames)
    assert extras["variance_penalty"].item() > 1.0
    assert torch.isclose(loss, extras["reconstruction"] + config.actions.variance_weight * extras["variance_penalty"])
    _, output = stages.run_actions(config, train, val, tmp_path / "a.pt", 0)
    assert output.metrics["val_loss"] < 2.0 < output.metrics["variance_penalty"]  # smooth L1 of pixels in [-1, 1]


def test_moving_weight_trains_on_the_moving_pixels_and_val_loss_stays_the_plain_reconstruction(windows):
    _, _, val = windows
    frames, _ = val.batch(np.arange(4))
    config = tiny_config(variance_floor=0.0)  # no hinge: the loss is the reconstruction alone
    anchor = LatentActionModel(config)
    config.actions.moving_weight = 10.0
    weighted = LatentActionModel(config)
    weighted.load_state_dict(anchor.state_dict())
    torch.manual_seed(0)
    anchor_loss, anchor_extras = anchor.loss(frames)
    torch.manual_seed(0)
    loss, extras = weighted.loss(frames)
    assert torch.equal(extras["reconstruction"], anchor_extras["reconstruction"])  # val_loss: the task loss
    assert torch.equal(anchor_loss, anchor_extras["reconstruction"])
    # By hand: the errors of the pixels that change weigh 11, the others 1.
    with torch.no_grad():
        predicted = weighted.decode(frames[:, :-1], weighted.infer_actions(frames)[1])
    errors = torch.nn.functional.smooth_l1_loss(predicted, frames[:, 1:], reduction="none")
    moving = metrics.moving_pixels(frames).expand_as(errors)
    assert 0 < moving.float().mean() < 0.5
    expected = (errors.sum() + 10 * errors[moving].sum()) / (errors.numel() + 10 * moving.sum())
    assert torch.isclose(loss, expected, rtol=1e-5)


def test_the_tokenizers_moving_weight_weighs_pixels_moving_into_or_out_of_a_frame(windows):
    _, _, val = windows
    frames, _ = val.batch(np.arange(4))  # [B, T, 3, H, W]
    config = tiny_config()
    plain = VideoTokenizer(config)
    config.tokenizer.moving_weight = 10.0
    weighted = VideoTokenizer(config)
    weighted.load_state_dict(plain.state_dict())
    loss, _ = weighted.loss(frames)
    with torch.no_grad():
        recon, _ = plain(frames)
    errors = torch.nn.functional.smooth_l1_loss(recon, frames, reduction="none")  # [B, T, 3, H, W]
    assert torch.equal(plain.loss(frames)[0], errors.mean())  # off: the plain mean, as the val loss
    # By hand: a pixel of frame t weighs 11 when it differs from frame t-1 or from frame t+1.
    moving = torch.zeros(errors.shape[:2] + (1,) + errors.shape[3:], dtype=torch.bool)  # [B, T, 1, H, W]
    for t in range(frames.shape[1]):
        for other in (t - 1, t + 1):
            if 0 <= other < frames.shape[1]:
                changed = (frames[:, t] - frames[:, other]).abs().amax(dim=1, keepdim=True) > metrics.MOVING_THRESHOLD
                moving[:, t] |= changed
    moving = moving.expand_as(errors)
    assert 0 < moving.float().mean() < 0.5
    expected = (errors.sum() + 10 * errors[moving].sum()) / (errors.numel() + 10 * moving.sum())
    assert torch.isclose(loss, expected, rtol=1e-5)


def test_code_entropy_term_is_lowest_for_confident_codes_used_evenly():
    confident = 4.0
    all_four = confident * torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]]).view(4, 1, 2)
    one_code = confident * torch.ones(4, 1, 2)
    undecided = torch.zeros(4, 1, 2)
    penalty = {name: float(sample - batch) for name, (sample, batch) in
               {"all_four": code_entropies(all_four), "one_code": code_entropies(one_code),
                "undecided": code_entropies(undecided)}.items()}
    assert penalty["all_four"] == pytest.approx(-np.log(4), abs=0.05)  # the minimum: log 4 codes, each certain
    assert penalty["one_code"] == pytest.approx(0.0, abs=0.05)  # certain, but one code for everything
    assert penalty["undecided"] == pytest.approx(0.0, abs=1e-6)  # every code equally likely for every transition
    config = tiny_config(variance_floor=0.0)
    config.actions.entropy_weight = 0.5
    lam = LatentActionModel(config)
    frames = torch.rand(4, 4, 3, 16, 16) * 2 - 1
    loss, extras = lam.loss(frames)
    assert torch.isclose(loss, extras["reconstruction"] + 0.5 * extras["entropy_penalty"])


# ----------------------------------------------------------------------------- bad input, one line each

# ----------------------------------------------------------------------------- anti-collapse options

def test_decoder_context_all_lets_the_lam_decoder_see_the_past_frames(windows):
    """"first" (the anchor) masks every input frame but frame 0; "all" (Genie) shows frames 0..t."""
    _, train, _ = windows
    frames = train.batch(np.arange(2))[0][:, :-1]  # [2, T-1, 3, H, W]
    changed = frames.clone()
    changed[:, 1] = -changed[:, 1]  # a different input frame 1
    actions = torch.ones(2, frames.shape[1], 2)
    for context, frame_one_matters in (("first", False), ("all", True)):
        config = tiny_config()
        config.actions.decoder_context = context
        torch.manual_seed(0)
        lam = LatentActionModel(config.validate()).eval()
        with torch.no_grad():
            before, after = lam.decode(frames, actions), lam.decode(changed, actions)
        assert torch.equal(before[:, 0], after[:, 0])  # causal: frame 1 never reaches the first prediction
        assert (not torch.equal(before[:, 1:], after[:, 1:])) == frame_one_matters, context


class NearlyConstantEncoder(torch.nn.Module):
    """Latents all on one side of the 2-level FSQ boundary, as in the anchor's collapse."""

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return 1.0 + 1e-4 * torch.randn(frames.shape[0], frames.shape[1] - 1, 2)  # [B, T-1, A]


def test_action_norm_splits_every_step_of_the_batch_even_from_a_near_constant_encoder(windows):
    _, train, _ = windows
    frames = train.batch(np.arange(8))[0]  # [8, T, 3, H, W]
    config = tiny_config()
    config.actions.action_norm = "batch"
    lam = LatentActionModel(config.validate()).train()
    lam.encoder = NearlyConstantEncoder()
    _, quantised = lam.infer_actions(frames)  # [8, T-1, 2]
    for step in range(quantised.shape[1]):
        for dim in range(2):
            assert set(quantised[:, step, dim].tolist()) == {-1.0, 1.0}, (step, dim)
    anchor = LatentActionModel(tiny_config()).train()
    anchor.encoder = lam.encoder
    assert set(anchor.infer_actions(frames)[1].flatten().tolist()) == {1.0}  # the anchor's collapse


class CorrelatedEncoder(torch.nn.Module):
    """Both action dims carry nearly the same feature: standardised, they land on the same code half."""

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        feature = torch.randn(frames.shape[0], frames.shape[1] - 1, 1)  # [B, T-1, 1]
        return torch.cat([feature, feature + 0.05 * torch.randn_like(feature)], dim=-1)  # [B, T-1, 2]


def test_whitening_decorrelates_the_action_dims_where_standardising_does_not(windows):
    _, train, _ = windows
    frames = train.batch(np.arange(64) % len(train))[0]  # [64, T, 3, H, W]
    dims_agree = {}
    for kind in ("batch", "whiten"):
        config = tiny_config()
        config.actions.action_norm = kind
        lam = LatentActionModel(config.validate()).train()
        lam.encoder = CorrelatedEncoder()
        torch.manual_seed(0)
        pre, quantised = lam.infer_actions(frames)  # [64, T-1, 2] each
        dims_agree[kind] = (quantised[..., 0] == quantised[..., 1]).float().mean().item()
        if kind == "whiten":
            for step in range(pre.shape[1]):
                covariance = torch.cov(pre[:, step].T)  # [2, 2]
                assert torch.allclose(covariance, torch.eye(2), atol=0.02), (step, covariance)
    assert dims_agree["batch"] > 0.9 and dims_agree["whiten"] < 0.75, dims_agree  # whitened: independent bits
    lam.eval()  # running statistics at eval: the same whitening, one clip at a time
    assert lam.infer_actions(frames[:1])[1].shape == (1, frames.shape[1] - 1, 2)


def test_anti_collapse_options_leave_the_anchors_ids_and_parameters_alone():
    config = tiny_config()
    anchor_json = stages.stage_config_json(config, "actions")
    for option in ("decoder_context", "action_norm", "moving_weight", "entropy_weight"):
        assert option not in anchor_json
    config.actions.decoder_context, config.actions.action_norm = "all", "batch"
    config.actions.moving_weight, config.actions.entropy_weight = 10.0, 0.01
    assert stages.stage_config_json(config, "actions") != anchor_json
    assert n_params(LatentActionModel(config)) == n_params(LatentActionModel(tiny_config()))
    tokenizer_json = stages.stage_config_json(config, "tokenizer")
    assert "moving_weight" not in tokenizer_json
    config.tokenizer.moving_weight = 10.0
    assert stages.stage_config_json(config, "tokenizer") != tokenizer_json


def test_rotary_code_makes_spatial_attention_scores_depend_on_the_offset_alone():
    from worldmodel.layers import Attention, Rotary

    attention = Attention(32, heads=8, position=Rotary(grid=4, head_dim=4, heads=8))
    # The same q and k content on every patch: with the rotary code, q_i . k_j depends on j - i only.
    content = torch.randn(1, 1, 1, 96).expand(1, 1, 16, 96)  # [B, T, P, 3E]
    rotated = rotate(content, attention.position.tables)
    q, k = rearrange(rotated[..., :64], "b t p (two h d) -> two (b t) h p d", two=2, h=8)  # [BT, H, P, d]
    scores = q[0] @ k[0].transpose(-1, -2)  # [H, P, P]
    at = lambda x, y: y * 4 + x  # noqa: E731  (patch index of column x, row y)
    one_right = torch.stack([scores[:, at(x, y), at(x + 1, y)] for x in range(3) for y in range(4)])
    one_down = torch.stack([scores[:, at(x, y), at(x, y + 1)] for x in range(4) for y in range(3)])
    assert torch.allclose(one_right, one_right[:1].expand_as(one_right), atol=1e-5)
    assert torch.allclose(one_down, one_down[:1].expand_as(one_down), atol=1e-5)
    assert not torch.allclose(one_right[0], one_down[0], atol=1e-3)  # x and y offsets are told apart
    plain = rearrange(content[..., :64], "b t p (two h d) -> two (b t) h p d", two=2, h=8)
    assert torch.allclose((plain[0, 0, :, 0] * plain[1, 0, :, 0]).sum(-1), scores[:, 0, 0])  # no turn at the origin
    assert torch.equal(rotated[..., 64:], content[..., 64:])  # v is untouched


def test_rotary_code_lr_decay_and_last_frame_masking_add_no_parameters_and_leave_the_anchors_ids_alone():
    anchor = WorldModelConfig(frame_size=16).validate()
    config = copy.deepcopy(anchor)
    for name in ("tokenizer", "actions", "dynamics"):
        config.stage(name).rotary, config.stage(name).lr_decay = True, "cosine"
        assert stages.stage_config_json(anchor, name) == stages.stage_config_json(WorldModelConfig(frame_size=16), name)
        assert "rotary" not in stages.stage_config_json(anchor, name)
        assert stages.stage_config_json(config, name) != stages.stage_config_json(anchor, name)
    config.dynamics.masked_frames = "last"
    assert "masked_frames" not in stages.stage_config_json(anchor, "dynamics")
    for model in (VideoTokenizer, LatentActionModel, Dynamics):
        assert n_params(model(config)) == n_params(model(anchor))


def test_cosine_lr_decay_falls_from_lr_after_the_warmup_to_a_tenth_at_the_last_step():
    stage = WorldModelConfig().actions
    stage.lr, stage.steps, stage.warmup_steps = 2e-3, 100, 10
    assert [learning_rate(stage, step) for step in (0, 9, 50, 99)] == pytest.approx([2e-4, 2e-3, 2e-3, 2e-3])  # anchor
    stage.lr_decay = "cosine"
    rates = [learning_rate(stage, step) for step in range(100)]
    assert rates[:10] == pytest.approx([2e-4 * (step + 1) for step in range(10)])  # the same warmup
    assert rates[10] == pytest.approx(2e-3) and rates[-1] == pytest.approx(2e-4)
    assert all(later < earlier for earlier, later in zip(rates[10:], rates[11:]))


def one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("change, expected", [
    ({"frame_size": 30}, "frame_size 30 is not divisible by patch_size 4"),
    ({"n_actions": 6}, "n_actions 6 is not a power of two"),
])
def test_bad_model_shapes_get_one_line(change, expected):
    with pytest.raises(WorldbenchError, match=expected) as err:
        WorldModelConfig(**change).validate()
    one_line(err)


def test_bad_embed_dims_get_one_line():
    config = WorldModelConfig()
    config.tokenizer.embed_dim = 30
    with pytest.raises(WorldbenchError, match="tokenizer.embed_dim 30 is not divisible by tokenizer.heads 8") as err:
        config.validate()
    one_line(err)
    config = WorldModelConfig()
    config.actions.embed_dim, config.actions.heads = 4, 2
    with pytest.raises(WorldbenchError, match="embed_dim 4 is too small for the position codes") as err:
        config.validate()
    one_line(err)


def test_model_frame_size_must_match_the_data(tmp_path, windows):
    _, train, val = windows  # 16x16 frames
    config = WorldModelConfig(frame_size=32).validate()
    with pytest.raises(WorldbenchError, match="dataset frames are 16x16 but the model's frame_size is 32") as err:
        stages.run_tokenizer(config, train, val, tmp_path / "t.pt", 0)
    one_line(err)


def test_unknown_variant_lists_the_known_ones():
    config = WorldModelConfig()
    config.actions.encoder = "transformer_xl"
    with pytest.raises(WorldbenchError, match="unknown lam_encoder 'transformer_xl'; known: blind, meanpool_concat, "
                                              "query_pool, windowed_attention") as err:
        LatentActionModel(config)
    one_line(err)


def test_checkpoints_from_another_config_or_corrupted_or_pickled_are_refused(tmp_path, windows):
    _, train, val = windows
    config = tiny_config()
    stages.run_tokenizer(config, train, val, tmp_path / "t.pt", 0)
    other = tiny_config(lr=5e-4)
    with pytest.raises(WorldbenchError, match="trained for another config .*'tokenizer.lr': 0.001 vs 0.0005") as err:
        stages.load_stage("tokenizer", other, tmp_path / "t.pt")
    one_line(err)

    corrupted = tmp_path / "corrupted.pt"
    corrupted.write_bytes((tmp_path / "t.pt").read_bytes()[:500])
    with pytest.raises(WorldbenchError, match="corrupted or not a plain-tensor worldbench checkpoint") as err:
        stages.load_stage("tokenizer", config, corrupted)
    one_line(err)

    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "worldbench-checkpoint-1", "payload": Payload()}, pickled)
    with pytest.raises(WorldbenchError, match="corrupted or not a plain-tensor worldbench checkpoint") as err:
        stages.load_stage("tokenizer", config, pickled)
    one_line(err)


@torch.no_grad()  # values only: no loss here is differentiated
def test_tokenizer_latent_penalty_pulls_saturated_latents_back_and_stays_out_of_the_task_loss() -> None:
    """The hinge is zero while every pre-quantisation latent is inside [-1, 1] and grows past it; it adds to
    the training loss only (the val loss is the plain reconstruction) and is off, and out of the ids, by default."""
    config = tiny_config()
    frames = torch.rand(2, config.window, 3, config.frame_size, config.frame_size) * 2 - 1  # [B, T, 3, H, W]
    torch.manual_seed(0)
    plain = VideoTokenizer(config)
    config.tokenizer.latent_penalty = 0.5
    torch.manual_seed(0)
    penalised = VideoTokenizer(config)
    with torch.no_grad():  # latents inside tanh's live range: no penalty, the same loss as without it
        penalised.to_latent[1].weight.mul_(1e-3)
        plain.to_latent[1].weight.mul_(1e-3)
    loss, extras = penalised.loss(frames)
    assert float(extras["range_penalty"]) == 0.0
    assert torch.allclose(loss, plain.loss(frames)[0])
    with torch.no_grad():  # driven far past +-1: the hinge is (|z| - 1)^2 on average
        penalised.to_latent[1].bias.fill_(3.0)
    loss, extras = penalised.loss(frames)
    pre = penalised.pre_latents(frames)
    assert float(extras["range_penalty"]) == pytest.approx(float(((pre.abs() - 1).clamp(min=0) ** 2).mean()))
    assert float(extras["range_penalty"]) > 1.0
    recon, _ = penalised(frames)
    assert float(loss) == pytest.approx(float(torch.nn.functional.smooth_l1_loss(recon, frames)
                                               + 0.5 * extras["range_penalty"]))
    assert "latent_penalty" not in stages.stage_config_json(tiny_config(), "tokenizer")
    assert "latent_penalty" in stages.stage_config_json(config, "tokenizer")


def test_dynamics_val_masks_come_from_their_own_generator() -> None:
    """Evaluation draws its masks from a generator seeded the same for every run, so two runs' val losses
    differ by their models only: the global RNG (the seed's stream) does not reach the masks."""
    config = tiny_config()
    torch.manual_seed(0)
    model = Dynamics(config).eval()
    codes = torch.randint(config.codebook_size, (4, config.window, config.patches))  # [B, T, P]
    actions = torch.randint(0, 2, (4, config.window - 1, config.action_dim)).float() * 2 - 1  # [B, T-1, A]
    losses = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        with torch.no_grad():
            losses.append(model.loss(codes, actions, generator=torch.Generator().manual_seed(stages.EVAL_MASK_SEED))[0])
    assert torch.equal(losses[0], losses[1])
    torch.manual_seed(1)
    with torch.no_grad():
        assert not torch.equal(model.loss(codes, actions)[0], model.loss(codes, actions)[0])
