"""The component slots (issue 19): each component's forward, backward and parameter count; the anchor's ids and
golden checkpoints unchanged; Muon against a hand-written Newton-Schulz step; MoE routing and its balance loss;
every MaskGIT schedule unmasking every token; the built-in roadmap variants and a variant's scope."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

import variants  # noqa: F401  (registers the built-in components)
from harness.compat import GOLDEN_DIR, check_compat
from harness.kpis import KPIS, stage_kpis
from harness.matrix import plan_runs
from harness.schema import SLOTS
from harness.suite import build_suite, load_suite
from variants.alibi import ALiBi
from variants.maskgit_schedules import halton_order
from variants.moe import MixtureOfExperts, balance_loss
from variants.muon import MuonWithAdamW, hidden_matrices
from worldmodel import registry, stages
from worldmodel.auxiliary import measurements, pop_loss_terms, reset_measurements
from worldmodel.config import STAGES, WorldModelConfig
from worldmodel.dynamics import Dynamics
from worldmodel.errors import WorldbenchError
from worldmodel.layers import BlockChoices, Rotary
from worldmodel.train import train_stage

from tiny import tiny_config

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "bench.toml"
E, HIDDEN, A = 16, 32, 2  # the tiny / smoke stage width, SwiGLU hidden width and action dims


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread runs them in milliseconds, where two wait on each other under load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def with_component(slot: str, name: str, stages_: tuple[str, ...] | None = None) -> WorldModelConfig:
    """The tiny config with one component chosen in the slot's default stages (as a bench.toml variant does)."""
    config = tiny_config()
    values = config.to_dict()
    for stage in stages_ or SLOTS[slot].default_scope:
        values[stage][SLOTS[slot].key] = name
        if slot == "position":
            values[stage]["rotary"] = name == "rotary"
    return WorldModelConfig.from_dict(values)


def one_batch(stage: str, config: WorldModelConfig) -> tuple[torch.Tensor, ...]:
    if stage != "dynamics":
        return (torch.rand(3, config.window, 3, config.frame_size, config.frame_size) * 2 - 1,)
    return (torch.randint(config.codebook_size, (3, config.window, config.patches)),
            torch.randint(2, (3, config.window - 1, config.action_dim)).float() * 2 - 1)


# ----------------------------------------------------------------------------- the anchor is unchanged

def test_the_default_config_keeps_todays_stage_ids_and_loads_the_golden_checkpoints():
    smoke = load_suite(SUITE).model_config("smoke", "meanpool_concat")
    for stage in STAGES:
        golden = torch.load(GOLDEN_DIR / f"{stage}.pt", weights_only=True)
        assert stages.stage_config_json(smoke, stage) == golden["config"]  # the config part of today's stage ids
        for key in ("ffn", "moe_", "optimizer", "position", "conditioning", "maskgit_schedule", "action_injection"):
            assert key not in golden["config"]
    assert check_compat().ok
    assert [n_params(stages.build_model(stage, smoke)) for stage in STAGES] == [8_393, 9_598, 21_039]


def test_position_rotary_is_the_old_rotary_switch_and_keeps_its_stage_ids():
    old, new = tiny_config(), with_component("position", "rotary")
    for stage in STAGES:
        old.stage(stage).rotary = True
        assert stages.stage_config_json(new, stage) == stages.stage_config_json(old, stage)
        assert f'"{stage}.rotary": true' in stages.stage_config_json(new, stage)
    # The ci profile's rotary LAM and dynamics: the `rope` variant shares their stages with the baseline.
    suite = load_suite(SUITE)
    base, rope = plan_runs(suite, "ci", "sprite_world", ["meanpool_concat", "rope"], [0])
    assert base.stage_ids["actions"] == rope.stage_ids["actions"]
    assert base.stage_ids["dynamics"] != rope.stage_ids["dynamics"]  # its tokenizer upstream changed


def test_a_maskgit_schedule_variant_decodes_with_the_baselines_trained_dynamics():
    suite = load_suite(SUITE)
    base, cosine, halton = plan_runs(suite, "ci", "sprite_world", ["meanpool_concat", "maskgit_cosine",
                                                                    "maskgit_halton"], [0])
    assert base.stage_ids == cosine.stage_ids == halton.stage_ids  # every stage trained once
    assert len({base.run_id, cosine.run_id, halton.run_id}) == 3
    # The run id follows the schedule itself, not only the variant's name: a new schedule re-records the run.
    renamed = load_suite(SUITE, ["variants.maskgit_cosine.components.maskgit_schedule='halton'"])
    (again,) = plan_runs(renamed, "ci", "sprite_world", ["maskgit_cosine"], [0])
    assert again.stage_ids == cosine.stage_ids and again.run_id != cosine.run_id
    # A stage's weights do not depend on how it decodes, so its checkpoint loads under any schedule.
    config = with_component("maskgit_schedule", "halton")
    assert stages.stage_config_json(config, "dynamics") == stages.stage_config_json(tiny_config(), "dynamics")
    # maskgit_steps stays in the dynamics id: it is part of the golden checkpoints' recorded config.
    golden = torch.load(GOLDEN_DIR / "dynamics.pt", weights_only=True)["config"]
    assert '"dynamics.maskgit_steps": 2' in golden
    assert golden == stages.stage_config_json(suite.model_config("smoke", "meanpool_concat"), "dynamics")


# ----------------------------------------------------------------------------- every component

def film(cond_dim: int = A) -> int:
    return cond_dim * 2 * E + 2 * E  # Linear(A, 2E)


SWIGLU = E * 2 * (2 * HIDDEN // 3) + 2 * (2 * HIDDEN // 3) + (2 * HIDDEN // 3) * E + E  # value_gate + out
# (slot, component, parameter change per stage against the anchor, for one block per stack)
COMPONENTS = [
    ("ffn", "swiglu", {}),
    ("ffn", "moe", {"dynamics": 3 * SWIGLU + E * 4}),  # 3 more experts and a bias-free router
    ("position", "absolute", {}),
    ("position", "rotary", {}),
    ("position", "alibi", {}),
    ("conditioning", "film", {}),
    # Linear(A, 3E) instead of FiLM's Linear(A, 2E) in 3 norms, and the final Linear(A, 2E), per conditioned stack
    ("conditioning", "adaln_zero", {"actions": 3 * (A * E + E) + film(), "dynamics": 3 * (A * E + E) + film()}),
    ("action_injection", "norm_conditioning", {}),
    ("action_injection", "prepend_token", {"dynamics": A * E + E - 3 * film() + 3 * E}),  # token; RMSNorms
    ("maskgit_schedule", "exponential", {}),
    ("maskgit_schedule", "cosine", {}),
    ("maskgit_schedule", "halton", {}),
    ("optimizer", "adamw", {}),
    ("optimizer", "muon", {}),
]


def test_the_six_slots_list_their_components():
    listed = registry.components()
    for slot, name, _ in COMPONENTS:
        assert name in listed[slot]
        assert registry.describe(slot, name)
    assert set(SLOTS) <= set(listed)  # a plugin may add slots of its own


@pytest.mark.parametrize("slot,name,extra", COMPONENTS, ids=[f"{s}-{n}" for s, n, _ in COMPONENTS])
def test_each_component_trains_forward_and_backward_with_its_parameter_count(slot, name, extra):
    anchor, config = tiny_config(), with_component(slot, name)
    for stage in STAGES:
        torch.manual_seed(0)
        model = stages.build_model(stage, config).train()
        assert n_params(model) == n_params(stages.build_model(stage, anchor)) + extra.get(stage, 0), stage
        optimizer = registry.lookup("optimizer", config.stage(stage).optimizer)(model, config.stage(stage))
        loss, _ = model.loss(*one_batch(stage, config))
        terms = pop_loss_terms(model)
        (loss + sum(terms.values())).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads), stage
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.step()
        assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters())), f"{stage} did not move"


@pytest.mark.parametrize("position", ["rotary", "alibi"])
def test_position_codes_leave_a_prepended_action_token_alone(position):
    config = with_component("action_injection", "prepend_token")
    values = config.to_dict()
    values["dynamics"]["position"] = position
    model = Dynamics(WorldModelConfig.from_dict(values))
    loss, _ = model.loss(*one_batch("dynamics", config))
    loss.backward()
    code = model.transformer.blocks[0].spatial.position
    qkv = torch.randn(1, 1, config.patches + 1, 3 * E)  # [B, T, 1 + P, 3E]
    moved, bias = code(qkv)
    alone, _ = code(qkv[:, :, 1:])  # the patches without the token
    assert torch.equal(moved[:, :, 0], qkv[:, :, 0]) and torch.equal(moved[:, :, 1:], alone)  # the token is not turned
    if bias is not None:
        assert bias.shape == (4, config.patches + 1, config.patches + 1)
        assert not bias[:, 0].any() and not bias[:, :, 0].any()  # no bias to or from the token


def test_alibi_lowers_scores_with_patch_distance_and_rotary_tables_match_the_anchor_code():
    bias = ALiBi(grid=4, head_dim=4, heads=4).bias  # [heads, P, P]
    assert torch.all(bias.diagonal(dim1=1, dim2=2) == 0)
    assert torch.allclose(bias[:, 0, 1] * 2, bias[:, 0, 2]) and torch.all(bias[:, 0, 1] < 0)  # linear in distance
    assert torch.all(bias[0] < bias[-1] + 1e-9)  # the first head has the steepest slope
    rotary = Rotary(grid=4, head_dim=4, heads=4)
    assert not any(True for _ in rotary.parameters()) and "tables" not in rotary.state_dict()


def test_adaln_zero_blocks_start_as_the_identity_and_film_ones_do_not():
    from worldmodel.layers import STTransformer
    torch.manual_seed(0)
    tokens, cond = torch.randn(2, 4, 16, E), torch.randn(2, 4, A)  # [B, T, P, E], [B, T, A]
    for conditioning in ("adaln_zero", "film"):
        stack = STTransformer(E, 4, HIDDEN, 2, 4, cond_dim=A, choices=BlockChoices(conditioning=conditioning))
        normed = torch.nn.functional.layer_norm(tokens + stack.time_code[:, None], (E,))  # the final norm alone
        assert torch.allclose(stack(tokens, cond), normed, atol=1e-5) == (conditioning == "adaln_zero")


def test_a_prepended_action_token_reaches_the_patches_and_leaves_the_output():
    config = with_component("action_injection", "prepend_token")
    torch.manual_seed(0)
    model = Dynamics(config).eval()
    assert model.transformer.blocks[0].norm_ffn.__class__.__name__ == "RMSNorm"  # the token is the only way in
    codes, actions = one_batch("dynamics", config)
    mask = torch.zeros(codes.shape, dtype=torch.bool)
    latents = model.fsq.from_indices(codes)
    seen = []
    model.transformer.register_forward_hook(lambda module, args, out: seen.append(out))
    hidden = model.hidden(latents, actions, mask)  # [B, T, P, E]
    assert seen[0].shape[2] == config.patches + 1 and torch.equal(hidden, seen[0][:, :, 1:])
    assert not torch.allclose(hidden[:, 1:], model.hidden(latents, -actions, mask)[:, 1:])  # frames 1.. read it
    assert torch.equal(hidden[:, 0], model.hidden(latents, -actions, mask)[:, 0])  # frame 0's action is zero


# ----------------------------------------------------------------------------- Muon

def newton_schulz(update: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The reference: X = M / ||M||_F, then X <- a X + (b A + c A^2) X with A = X X^T, on the wide orientation."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = update / update.norm()
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


@pytest.mark.parametrize("shape", [(3, 5), (5, 3)])
def test_a_muon_step_matches_a_reference_newton_schulz_iteration(shape):
    lr, decay, momentum = 0.1, 0.01, 0.95
    generator = torch.Generator().manual_seed(0)
    w0, g1, g2 = (torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(3))
    weight, bias = torch.nn.Parameter(w0.float()), torch.nn.Parameter(torch.zeros(3))
    optimizer = MuonWithAdamW([weight], [bias], lr, decay)
    scale = math.sqrt(max(1.0, shape[0] / shape[1]))  # rows / cols: a tall matrix's update is scaled up
    # Two steps, Nesterov momentum as Keller Jordan writes it: B <- mu B + G, update direction G + mu B.
    expected = w0
    buffer = torch.zeros_like(w0)
    for gradient in (g1, g2):
        weight.grad, bias.grad = gradient.float(), torch.ones(3)
        optimizer.step()
        buffer = momentum * buffer + gradient
        expected = expected * (1 - lr * decay) - lr * scale * newton_schulz(gradient + momentum * buffer)
        # torch.optim.Muon iterates in bfloat16, as Keller Jordan's does: agreement to bf16 precision.
        assert torch.allclose(weight.detach().double(), expected, rtol=0, atol=0.03 * lr)
    assert not torch.allclose(newton_schulz(g1, steps=4), newton_schulz(g1), atol=0.1)  # the test can tell steps
    assert not torch.equal(bias.detach(), torch.zeros(3))  # the rest moved too (AdamW)


def test_muon_takes_the_attention_and_swiglu_matrices_and_adamw_the_rest():
    model = Dynamics(with_component("ffn", "moe"))
    muon = {name for name, p in model.named_parameters() if any(p is q for q in hidden_matrices(model))}
    assert muon and all(name.endswith(("qkv.weight", "out.weight", "value_gate.weight")) for name in muon)
    assert "transformer.blocks.0.ffn.experts.3.value_gate.weight" in muon
    for name in ("from_latent.weight", "to_logits.weight", "transformer.blocks.0.ffn.router.weight",
                 "transformer.blocks.0.norm_ffn.to_scale_shift.weight", "transformer.blocks.0.spatial.qkv.bias"):
        assert name not in muon
    optimizer = registry.lookup("optimizer", "muon")(model, tiny_config().dynamics)
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(list(model.parameters()))
    state = optimizer.state_dict()
    assert set(state) == {"muon", "adamw"}
    optimizer.load_state_dict(state)  # a checkpoint round trip


# ----------------------------------------------------------------------------- MoE

def test_moe_routes_every_token_to_exactly_top_k_experts_and_mixes_their_outputs():
    torch.manual_seed(0)
    moe = MixtureOfExperts(E, HIDDEN, BlockChoices(ffn="moe", experts=4, top_k=2)).eval()
    tokens = torch.randn(2, 3, 5, E)  # [B, T, P, E]
    probs, chosen, weights = moe.route(tokens.reshape(-1, E))
    assert chosen.shape == (30, 2) and all(len(set(row.tolist())) == 2 for row in chosen)  # two distinct experts
    assert torch.equal(chosen, probs.topk(2, dim=-1).indices)  # the two most probable
    assert torch.allclose(weights.sum(-1), torch.ones(30))
    out = moe(tokens).reshape(-1, E)
    for n in range(30):
        mixed = sum(w * moe.experts[int(e)](tokens.reshape(-1, E)[n]) for w, e in zip(weights[n], chosen[n]))
        assert torch.allclose(out[n], mixed, atol=1e-6)
    reset_measurements(moe)
    moe(tokens)
    loads = torch.bincount(chosen.flatten(), minlength=4).double()
    assert moe.load.sum() == 60 and torch.equal(moe.load, loads)  # every token counted k times
    assert measurements(moe)["moe_load_cv"] == pytest.approx(float(loads.std(correction=0) / loads.mean()))


def test_moe_balance_loss_is_one_at_an_even_load_and_grows_as_the_load_concentrates():
    experts, tokens = 4, 8
    uniform = torch.full((tokens, experts), 1 / experts)
    even = torch.tensor([[i % 4, (i + 1) % 4] for i in range(tokens)])  # each expert gets 1/4 of the slots
    assert balance_loss(uniform, even).item() == pytest.approx(1.0)
    skewed = torch.tensor([[0.45, 0.45, 0.05, 0.05]]).expand(tokens, -1)
    assert balance_loss(skewed, torch.tensor([[0, 1]]).expand(tokens, -1)).item() == pytest.approx(1.8)
    assert balance_loss(torch.tensor([[1.0, 0, 0, 0]]).expand(tokens, -1), torch.tensor([[0, 1]]).expand(tokens, -1)) \
        .item() == pytest.approx(2.0)
    # A zero router: uniform probabilities, so the loss is 1 whatever the (tied) choice.
    moe = MixtureOfExperts(E, HIDDEN, BlockChoices(ffn="moe")).train()
    torch.nn.init.zeros_(moe.router.weight)
    moe(torch.randn(tokens, E))
    assert moe.pop_loss_terms()["moe_balance"].item() == pytest.approx(0.01)  # weight 0.01 x 1
    assert moe.pop_loss_terms() == {}  # read once: a later step brings its own


def test_moe_balance_term_is_trained_on_but_stays_out_of_the_loss_and_val_loss(tmp_path):
    config = with_component("ffn", "moe")
    config.dynamics.steps, config.dynamics.log_every, config.dynamics.checkpoint_every = 2, 2, 2
    codes, actions = one_batch("dynamics", config)

    def losses(weight: float) -> tuple[float, list[dict]]:
        config.dynamics.moe_balance_weight = weight
        torch.manual_seed(0)
        model = Dynamics(config)
        torch.manual_seed(1)
        loss = model.loss(codes, actions)[0].item()
        result = train_stage("dynamics", model, config.dynamics, lambda g: (codes, actions), tmp_path / f"{weight}.pt",
                             stages.stage_config_json(config, "dynamics"), seed=0)
        return loss, result.curve

    plain, weighted = losses(0.0), losses(5.0)
    assert plain[0] == weighted[0]  # the model's loss (what val_loss evaluates) has no balance term
    assert weighted[1][-1]["moe_balance"] > 5 * 0.9 and plain[1][-1]["moe_balance"] == 0
    assert plain[1][-1]["loss"] != weighted[1][-1]["loss"]  # but training followed it


def test_a_muon_and_moe_stage_killed_midway_resumes_identically(tmp_path):
    values = with_component("ffn", "moe").to_dict()
    values["dynamics"]["optimizer"] = "muon"
    config = WorldModelConfig.from_dict(values)  # tiny: 8 steps, a checkpoint every 4
    config_json = stages.stage_config_json(config, "dynamics")

    def sample(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        codes = torch.randint(config.codebook_size, (3, config.window, config.patches), generator=generator)
        return codes, torch.randint(2, (3, config.window - 1, A), generator=generator).float() * 2 - 1

    def train(path: Path, progress=None):
        torch.manual_seed(0)
        model = Dynamics(config)
        return model, train_stage("dynamics", model, config.dynamics, sample, path, config_json, 0, progress)

    class Killed(Exception):
        pass

    def kill_at_step_6(step, total, loss):
        if step == 6:
            raise Killed

    whole_model, whole = train(tmp_path / "whole.pt")
    with pytest.raises(Killed):
        train(tmp_path / "resumed.pt", kill_at_step_6)
    resumed_model, resumed = train(tmp_path / "resumed.pt")  # from step 4: weights, both optimizers, RNGs
    assert [row["loss"] for row in resumed.curve] == [row["loss"] for row in whole.curve]
    assert [row["moe_balance"] for row in resumed.curve] == [row["moe_balance"] for row in whole.curve]
    for key, value in whole_model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key


def test_a_stage_records_its_moe_kpis_and_they_are_not_blocking(tmp_path):
    for stage in STAGES:
        for name in ("moe_load_cv", "moe_utilisation"):
            assert not KPIS[f"{stage}.{name}"].blocking
    config = with_component("ffn", "moe")
    config.dynamics.steps, config.dynamics.log_every, config.dynamics.checkpoint_every = 2, 2, 2
    batch = one_batch("dynamics", config)
    output = stages.train_and_evaluate("dynamics", Dynamics(config), config, lambda g: batch, tmp_path / "d.pt", 0,
                                       None, lambda model: {"val_loss": model.loss(*batch)[0].item()})
    kpis = stage_kpis("dynamics", output.train.curve, output.metrics, output.params, 1.0, 1.0)
    assert 0 <= kpis["dynamics.moe_load_cv"] and 0 < kpis["dynamics.moe_utilisation"] <= 1
    assert "dynamics.moe_balance" not in kpis  # the balance term is a curve, not a KPI


# ----------------------------------------------------------------------------- MaskGIT schedules

UNFILLED = -1  # a code no position decodes to


@pytest.mark.parametrize("name", ["exponential", "cosine", "halton"])
@pytest.mark.parametrize("rounds", [1, 2, 3, 8])
def test_each_maskgit_schedule_unmasks_every_token_by_its_last_step(name, rounds, monkeypatch):
    config = with_component("maskgit_schedule", name)
    schedule = registry.lookup("maskgit_schedule", name)(config)
    for positions in (16, 256):
        counts = schedule.counts(rounds, positions)
        assert len(counts) <= rounds - 1 and all(count >= 1 for count in counts) and sum(counts) <= positions
        assert schedule.unmasked_fraction(rounds, rounds) == pytest.approx(1.0)
    torch.manual_seed(0)
    model = Dynamics(config).eval()
    context = model.fsq.from_indices(torch.randint(config.codebook_size, (2, 3, config.patches)))
    actions = torch.randn(2, 3, config.action_dim).sign()
    unmasked = []  # per round, the positions of the new frame already unmasked (row 0)
    tokens = model.tokens

    def spy(latents, mask):
        if mask.shape[1] == 1:  # the new frame (the context goes through once, whole)
            unmasked.append(set((~mask[0, -1]).nonzero().flatten().tolist()))
        return tokens(latents, mask)

    model.tokens = spy
    # predict_next starts from torch.zeros codes, and 0 is a valid code: start from a sentinel instead, so a
    # position no round fills shows up.
    zeros = torch.zeros
    monkeypatch.setattr(torch, "zeros", lambda *shape, dtype=None, **kw: zeros(*shape, dtype=dtype, **kw).fill_(
        UNFILLED) if dtype == torch.long else zeros(*shape, dtype=dtype, **kw))
    codes = model.predict_next(context, actions, rounds=rounds)
    assert codes.shape == (2, config.patches) and not (codes == UNFILLED).any(), f"unfilled: {(codes < 0).sum()}"
    counts = schedule.counts(rounds, config.patches)
    assert [len(done) for done in unmasked] == [sum(counts[:i]) for i in range(len(unmasked))]  # its counts
    if name == "halton":  # its order, not the model's confidence
        order = halton_order(config.grid)
        assert unmasked == [set(order[: sum(counts[:i])]) for i in range(len(unmasked))]


CACHED_DECODING = [("conditioning", "film"), ("conditioning", "adaln_zero"), ("action_injection", "prepend_token"),
                   ("ffn", "moe"), ("position", "alibi"), ("position", "rotary"), ("maskgit_schedule", "halton")]


def uncached(transformer: torch.nn.Module):
    """STTransformer.extend as if there were no cache: every frame so far through forward, the new ones kept."""
    def extend(x, cond, past=None):
        frames = x if past is None else torch.cat([past[0], x], dim=1)
        conds = cond if past is None or cond is None else torch.cat([past[1], cond], dim=1)
        return transformer(frames, conds)[:, -x.shape[1]:], (frames, conds)
    return extend


@pytest.mark.parametrize("slot,name", CACHED_DECODING, ids=[f"{s}-{n}" for s, n in CACHED_DECODING])
def test_maskgit_decoding_from_the_context_cache_equals_running_every_frame_again(slot, name):
    config = with_component(slot, name)
    config.dynamics.blocks = 2  # a cache per block, the second fed by the first
    torch.manual_seed(0)
    model = Dynamics(config).eval()
    for parameter in model.parameters():  # away from the zero / near-zero inits, so actions and every block matter
        parameter.data += 0.3 * torch.randn_like(parameter)
    frames = torch.randn(3, 4, config.patches, E)  # [B, T, P, E]
    cond = torch.randn(3, 4, A) if model.inject.cond_dim else None
    whole = model.transformer(frames, cond)  # [B, T, P, E]
    first, cache = model.transformer.extend(frames[:, :3], None if cond is None else cond[:, :3])
    last, _ = model.transformer.extend(frames[:, 3:], None if cond is None else cond[:, 3:], cache)
    assert torch.allclose(torch.cat([first, last], dim=1), whole, atol=1e-5)
    assert [qkv.shape for qkv in cache] == [(3, 3, config.patches, 3 * E)] * 2

    context = model.fsq.from_indices(torch.randint(config.codebook_size, (6, 3, config.patches)))  # [B, Tc, P, L]
    actions = torch.randn(6, 3, A).sign()
    cached = model.predict_next(context, actions, rounds=4)
    model.transformer.extend = uncached(model.transformer)
    assert torch.equal(cached, model.predict_next(context, actions, rounds=4))


def test_the_exponential_schedule_keeps_the_anchors_counts_and_halton_spreads_its_positions():
    schedule = registry.lookup("maskgit_schedule", "exponential")(tiny_config())
    assert schedule.counts(4, 16) == [1, 1, 3]  # N expm1(5 s / S) / expm1(5), at least N / 16 a round
    assert schedule.counts(8, 256) == [16, 16, 16, 16, 16, 16, 41]
    assert schedule.counts(20, 16) == [1] * 16  # stops once every position is unmasked
    assert registry.lookup("maskgit_schedule", "cosine")(tiny_config()).counts(8, 256) == [16, 16, 16, 27, 39, 45, 48]
    for grid in (4, 16):
        order = halton_order(grid)
        assert sorted(order) == list(range(grid * grid))
    first = [divmod(p, 4) for p in halton_order(4)[:4]]  # (row, column) of the first four on a 4 x 4 grid
    assert min(math.dist(a, b) for i, a in enumerate(first) for b in first[i + 1:]) >= math.sqrt(2)  # no neighbours


# ----------------------------------------------------------------------------- variants, scope, bad input

ROADMAP = {"rope": {"position"}, "alibi": {"position"}, "adaln_zero": {"conditioning"},
           "maskgit_cosine": {"maskgit_schedule"}, "maskgit_halton": {"maskgit_schedule"},
           "action_token": {"action_injection"}, "moe_ffn": {"ffn"}, "muon": {"optimizer"},
           "moe_muon": {"ffn", "optimizer"}}


def test_each_roadmap_variant_is_the_baseline_with_one_slot_changed():
    suite = load_suite(SUITE)
    base = suite.model_config("smoke", suite.comparison.baseline).to_dict()
    for name, slots in ROADMAP.items():
        config = suite.model_config("smoke", name).to_dict()
        changed = {f"{stage}.{key}" for stage in STAGES for key, value in config[stage].items()
                   if base[stage][key] != value}
        keys = {key for slot in slots for key in (SLOTS[slot].key, "rotary" if slot == "position" else "")}
        assert changed and all(key.split(".")[1] in keys for key in changed), (name, changed)
    pr20 = suite.model_config("smoke", "moe_muon")
    assert (pr20.dynamics.ffn, pr20.dynamics.moe_experts, pr20.dynamics.moe_top_k) == ("moe", 4, 2)
    assert pr20.dynamics.moe_balance_weight == 0.01 and pr20.tokenizer.ffn == "swiglu"
    assert {pr20.stage(stage).optimizer for stage in STAGES} == {"muon"}


def test_a_variant_scope_picks_the_stages_and_a_bad_one_gets_one_line():
    raw = {"variants": {"moe_lam": {"components": {"ffn": "moe"}, "scope": {"ffn": ["actions", "dynamics"]}}}}
    config = build_suite(copy.deepcopy(raw)).model_config("default", "moe_lam")
    assert (config.tokenizer.ffn, config.actions.ffn, config.dynamics.ffn) == ("swiglu", "moe", "moe")
    bad = [({"components": {"ffn": "moe"}, "scope": {"ffn": ["rollout"]}}, "scope.ffn: 'rollout' is not allowed"),
           ({"components": {"ffn": "moe"}, "scope": {"optimizer": ["actions"]}}, "chooses no optimizer component"),
           ({"components": {"maskgit_schedule": "cosine"}, "scope": {"maskgit_schedule": ["tokenizer"]}},
            "use one of: dynamics"),
           ({"components": {"ffn": "moe"}, "scope": {"ffn": []}}, "scope.ffn: empty"),
           ({"components": {"ffn": "dense"}}, "components.ffn: 'dense' is not allowed; use one of: moe, swiglu"),
           ({"overrides": {"dynamics.optimizer": "lion"}}, "dynamics.optimizer: 'lion' is not allowed")]
    for table, message in bad:
        with pytest.raises(WorldbenchError, match=message.replace("(", r"\(").replace("[", r"\[")) as caught:
            build_suite({"variants": {"x": table}})
        assert "\n" not in str(caught.value)


@pytest.mark.parametrize("change,message", [
    ({"dynamics": {"moe_top_k": 5}}, "dynamics.moe_top_k 5 must be between 1 and dynamics.moe_experts 4"),
    ({"actions": {"rotary": True, "position": "alibi"}}, "actions: rotary = true and position = 'alibi'"),
    ({"tokenizer": {"conditioning": "adaln_zero"}}, "tokenizer.conditioning 'adaln_zero': the tokenizer is not"),
    ({"dynamics": {"moe_balance_weight": -1.0}}, "dynamics.moe_balance_weight -1.0 must be a finite number >= 0"),
])
def test_bad_component_options_get_one_line(change, message):
    values = tiny_config().to_dict()
    for stage, keys in change.items():
        values[stage].update(keys)
    with pytest.raises(WorldbenchError, match=message):
        WorldModelConfig.from_dict(values)


def test_adaln_zero_with_an_action_token_is_refused_rather_than_ignored():
    values = with_component("action_injection", "prepend_token").to_dict()
    values["dynamics"]["conditioning"] = "adaln_zero"
    with pytest.raises(WorldbenchError, match="conditions nothing with action_injection 'prepend_token'"):
        Dynamics(WorldModelConfig.from_dict(values))
