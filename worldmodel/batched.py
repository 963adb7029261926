"""Seed-batched training: K seeds of one stage trained as one stacked model.

The per-seed loop (worldmodel.train.train_stage) trains one small model at a time, which leaves a GPU
mostly idle at these sizes. Here the K seeds' copies of a stage's nn.Module are stacked parameter by
parameter (`torch.func.stack_module_state`: every tensor gets a leading seed axis K), one seed's loss
runs through `torch.func.functional_call` on a weightless template of the module, and `torch.vmap`
maps it over the seed axis, so each layer runs once as a K-batched op. What the per-seed path does
is kept exactly, seed by seed:

  init       torch.manual_seed(seed) then the stage's constructor, as worldmodel/stages.py does, then
             train.perturb_initial_weights when `init_noise` is on, then the move to the device;
  batches    each seed's own torch.Generator, seeded with the seed, drawn through the same sampler,
             so seed k sees the batches its per-seed run sees;
  randomness a loss that draws from the global RNG (the MaskGIT masks of the dynamics) draws outside
             vmap, one seed at a time, from that seed's own copy of the global RNG state (the state
             the per-seed run has after building its model): the same masks. Any other random draw
             inside a loss is an error (vmap randomness="error"), not a silent difference;
  gradients  the backward of sum_k loss_k, whose slice k is exactly d loss_k / d params_k; a
             component's loss terms (worldmodel/auxiliary.py) are added and logged as train_stage does;
  clipping   per seed: each seed's global gradient norm over its own slice, each slice scaled by its
             own min(1, clip / (norm + 1e-6)), as nn.utils.clip_grad_norm_ does for one model. (One
             clip over all K slices would couple the seeds: one seed's large gradient would shrink
             every other seed's step);
  optimiser  one optimiser over the stacked parameters, built from the per-seed one (the stage's
             `optimizer` component): AdamW, Adam and SGD are elementwise, weight decay included, so a
             stacked step is K per-seed steps; any other class (Muon) is refused with a clear error;
  schedule   train.learning_rate per step; the EMA of the weights (`ema`) stacked likewise;
  logging    curves per seed with the per-seed rows (mean loss and extras per log interval);
             it_per_s is the batched step rate, and wall_s each seed's share is the whole batched time;
  checkpoints per seed, written by train.snapshot from per-seed copies (model, optimiser slice, both
             RNG states, EMA): the per-seed path's format, so stages.run_* and load_stage read them
             unchanged, and a killed batched run resumes from them;
  divergence a non-finite loss marks only its seed diverged (StageDiverged in its outcome); the other
             seeds train on, since nothing in a step mixes the seed slices.

What differs: the float rounding. Batched matmuls block their sums differently from one model's, and
batched mode runs the plain PyTorch ops (WORLDBENCH_ATTENTION=torch while its forward runs): the native
CPU kernels of worldmodel/kernels read raw data pointers through ctypes, which a vmapped tensor does
not have. On the CPU attention runs on the MATH SDPA backend, which vmap batches; the CPU flash kernel
has no batching rule and would run once per seed. The dynamics loss is computed here as the masked mean
of the cross-entropy over every position (Dynamics.loss indexes the masked positions, a data-dependent
shape vmap cannot map): the same value up to the order of the sum. tests/test_batched.py checks all of
this against train_stage in float64, where the rounding differences are far below any real effect.

Not supported (a clear WorldbenchError, never a silent difference): a model with an operation vmap cannot
batch (the `moe` ffn: its routing uses nonzero(), whose output shape depends on the data), a loss that
draws random numbers inside itself, a non-elementwise optimiser, resuming seeds whose checkpoints are at
different steps. Evaluation stays per seed (stages.run_*, on the unstacked models).

How the harness uses it (harness/seed_batches.py, `bench run --seed-batch K`): the runs of one (profile,
dataset, variant) over K seeds share each stage's config; their stage ids differ only by seed. For the
tokenizer and the LAM, whose upstream is the dataset alone, one sampler over the shared train windows serves
all K; for the dynamics, seed k's upstream is seed k's own tokenizer and LAM, so each seed gets a sampler over
its own encoded windows (stages.dynamics_sampler). Each seed's checkpoint goes where its run's stage would put
it; then, per seed, `stages.run_*` finds the finished checkpoint, skips training and evaluates as always.

References: the PyTorch tutorial "Model ensembling" (torch.func.stack_module_state, functional_call,
vmap; https://pytorch.org/tutorials/intermediate/ensembling.html) and the torch.func docs on vmap's
randomness and in-place buffer updates (https://pytorch.org/docs/stable/func.ux_limitations.html).
"""
from __future__ import annotations

import copy
import os
import time
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from worldmodel import kernels
from worldmodel.auxiliary import pop_loss_terms
from worldmodel.config import StageConfig, WorldModelConfig
from worldmodel.dynamics import Dynamics
from worldmodel.errors import WorldbenchError
from worldmodel.registry import lookup
from worldmodel.stages import build_model
from worldmodel.train import (CPU, BatchSampler, FlatAdamW, Placement, ProgressHook, StageDiverged, TrainResult,
                              WeightAverage, learning_rate, load_checkpoint, peak_rss_mb, perturb_initial_weights,
                              restore, save_checkpoint, snapshot)

ELEMENTWISE_OPTIMIZERS = (FlatAdamW, torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD)  # a stacked step = K steps
CLIP_EPS = 1e-6  # nn.utils.clip_grad_norm_'s: scale = clip / (norm + 1e-6)


@dataclass
class SeedOutcome:
    """One seed's share of a batched run: its model (final weights, or the average with `ema`), as the
    per-seed path leaves it, its curve, and the divergence that stopped its logging, if any."""
    seed: int
    model: nn.Module
    result: TrainResult
    diverged: StageDiverged | None = None


@dataclass
class SeedState:
    """Everything train_stage keeps for one seed, as per-seed objects (what snapshot and restore read)."""
    seed: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    sampler: torch.Generator
    average: WeightAverage | None
    result: TrainResult = field(default_factory=TrainResult)
    step: int = 0
    finished: bool = False
    rng_cpu: torch.Tensor | None = None  # this seed's copy of the global CPU RNG state
    rng_device: torch.Tensor | None = None  # and of the CUDA one, on a CUDA placement
    diverged: StageDiverged | None = None


def model_builder(stage: str, config: WorldModelConfig) -> Callable[[], nn.Module]:
    """The constructor stages.py calls right after torch.manual_seed(seed) (train_seeds seeds it)."""
    return lambda: build_model(stage, config)


# ----------------------------------------------------------------------------- global RNG per seed

@contextmanager
def seed_rng(state: SeedState, device: torch.device) -> Iterator[None]:
    """Run with the global RNG holding this seed's state; keep what the draws left, and put the caller's back."""
    cuda = device.type == "cuda"
    saved_cpu = torch.get_rng_state()
    saved_device = torch.cuda.get_rng_state(device) if cuda else None
    torch.set_rng_state(state.rng_cpu)
    if cuda:
        torch.cuda.set_rng_state(state.rng_device, device)
    try:
        yield
    finally:
        state.rng_cpu = torch.get_rng_state()
        torch.set_rng_state(saved_cpu)
        if cuda:
            state.rng_device = torch.cuda.get_rng_state(device)
            torch.cuda.set_rng_state(saved_device, device)


def _capture_rng(state: SeedState, device: torch.device) -> None:
    state.rng_cpu = torch.get_rng_state()
    state.rng_device = torch.cuda.get_rng_state(device) if device.type == "cuda" else None


# ----------------------------------------------------------------------------- one seed's loss under vmap

def draw_loss_inputs(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The random inputs a stage's loss draws from the global RNG, drawn as its loss would (outside vmap)."""
    if isinstance(model, Dynamics):
        indices = batch[0]  # [B, T, P]
        return (Dynamics.training_mask(*indices.shape, device=indices.device, frames=model.masked_frames),)
    return ()


def masked_dynamics_loss(model: Dynamics, indices: torch.Tensor, actions: torch.Tensor,
                         mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Dynamics.loss with the mask given, as a masked mean over every position (a fixed shape for vmap).

    indices [B, T, P] codes, actions [B, T-1, A], mask [B, T, P] bool (True = masked, scored).
    """
    hidden = model.hidden(model.fsq.from_indices(indices), actions, mask)  # [B, T, P, E]
    logits = model.to_logits(hidden)  # [B, T, P, V]
    flat_logits = rearrange(logits, "b t p v -> (b t p) v")  # [N, V]
    nll = F.cross_entropy(flat_logits, rearrange(indices, "b t p -> (b t p)"), reduction="none")  # [N]
    scored = rearrange(mask, "b t p -> (b t p)").to(nll.dtype)  # [N]
    count = scored.sum()
    loss = (nll * scored).sum() / count
    # float32 as Dynamics.loss's `.float().mean()`: counts are exact, so the one division rounds the same
    hits = (flat_logits.argmax(-1) == rearrange(indices, "b t p -> (b t p)")).float()  # [N]
    accuracy = (hits * scored.float()).sum() / scored.float().sum()
    return loss, {"token_accuracy": accuracy.detach()}


class _StageLoss(nn.Module):
    """Template whose forward is one seed's training loss; functional_call gives it that seed's tensors.

    Returns (the model's loss, its extras, the components' loss terms): train_stage trains on the loss plus
    the terms and logs the terms beside the extras. The terms are popped here, inside vmap, because a
    component keeps them on itself, and a vmapped tensor must not outlive the call.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor],
                                                      dict[str, torch.Tensor]]:
        if isinstance(self.model, Dynamics):
            loss, extras = masked_dynamics_loss(self.model, *inputs)
        else:
            loss, extras = self.model.loss(*inputs)
        return loss, extras, pop_loss_terms(self.model)


@contextmanager
def pytorch_ops(device: torch.device) -> Iterator[None]:
    """The plain PyTorch path of worldmodel/fused.py, and on the CPU the MATH attention backend.

    The native kernels call C through raw data pointers, which a vmapped (BatchedTensor) input does not
    have: WORLDBENCH_ATTENTION (read at every call) selects the PyTorch ops instead. On the CPU,
    F.scaled_dot_product_attention would pick the flash kernel, which vmap has no batching rule for (it
    falls back to a loop over the seeds); the MATH backend is matmuls and a softmax, all batched. The
    CUDA backends have batching rules: there the default choice stays.
    """
    previous = os.environ.get(kernels.ENV_VAR)
    os.environ[kernels.ENV_VAR] = "torch"
    try:
        with ExitStack() as stack:
            if device.type == "cpu":
                stack.enter_context(sdpa_kernel(SDPBackend.MATH))
            yield
    finally:
        if previous is None:
            del os.environ[kernels.ENV_VAR]
        else:
            os.environ[kernels.ENV_VAR] = previous


# ----------------------------------------------------------------------------- stacking

def _per_seed(key: str, value: torch.Tensor, shape: torch.Size) -> bool:
    """Whether an optimiser state entry is per element of its parameter (moments), not shared (the step count)."""
    return key != "step" and isinstance(value, torch.Tensor) and value.shape == shape


def stacked_optimizer(states: list[SeedState], params: dict[str, torch.Tensor]) -> torch.optim.Optimizer:
    """One optimiser over the stacked parameters: the per-seed optimisers' class, groups and state, stacked."""
    first = states[0].optimizer
    if type(first) not in ELEMENTWISE_OPTIMIZERS:
        allowed = ", ".join(kind.__name__ for kind in ELEMENTWISE_OPTIMIZERS)
        raise WorldbenchError(f"seed-batched training needs an elementwise optimiser ({allowed}): a stacked "
                              f"{type(first).__name__} step would not be one step per seed; train these seeds one "
                              f"at a time")
    names = {id(p): name for name, p in states[0].model.named_parameters()}
    groups = [{**{key: value for key, value in group.items() if key != "params"},
               "params": [params[names[id(p)]] for p in group["params"]]} for group in first.param_groups]
    optimizer = type(first)(groups)
    for name, stacked in params.items():
        own = [state.model.get_parameter(name) for state in states]
        moments = [state.optimizer.state.get(p, {}) for state, p in zip(states, own)]
        if moments[0]:  # resumed: stack each seed's moments; the step count is the same for every seed
            optimizer.state[stacked] = {
                key: torch.stack([m[key] for m in moments]) if _per_seed(key, value, own[0].shape) else value.clone()
                for key, value in moments[0].items()}
    return optimizer


def clip_grad_norm_per_seed_(grads: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip each seed's slice of the stacked gradients [K, ...] by that seed's own global norm; returns the norms [K].

    For one seed this is nn.utils.clip_grad_norm_: the 2-norm of the per-tensor 2-norms, then every
    tensor times min(1, max_norm / (norm + 1e-6)).
    """
    per_tensor = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])  # [n, K]
    norms = torch.linalg.vector_norm(per_tensor, dim=0)  # [K]
    scale = (max_norm / (norms + CLIP_EPS)).clamp(max=1.0)  # [K]
    for g in grads:
        g.mul_(scale.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))  # [K, 1, ...] against [K, ...]
    return norms


class StackedSeeds:
    """K seeds' tensors stacked on a leading axis, their one optimiser and weight average, and a batched step."""

    def __init__(self, stage: str, states: list[SeedState], config: StageConfig):
        self.stage, self.config = stage, config
        self.params, self.buffers = stack_module_state([state.model for state in states])  # [K, ...]; params leaves
        self.optimizer = stacked_optimizer(states, self.params)
        self.averages: dict[str, torch.Tensor] | None = None
        if states[0].average is not None:  # the EMA covers the floating state_dict entries: params and buffers
            self.averages = {name: torch.stack([state.average.tensors[name] for state in states])
                             for name in states[0].average.tensors}
        template = _StageLoss(copy.deepcopy(states[0].model)).to("meta")  # code and shapes; tensors come per call

        def one_seed(params: dict, buffers: dict, *inputs: torch.Tensor):
            tensors = {f"model.{name}": value for name, value in {**params, **buffers}.items()}
            return functional_call(template, tensors, inputs)

        # randomness="error": a random draw inside a loss could not match the per-seed run's draw
        self.loss = vmap(one_seed, randomness="error")

    def step(self, step: int, inputs: tuple[torch.Tensor, ...], placement: Placement
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One training step of every seed on inputs [K, B, ...]: (losses [K], extras and loss terms {name: [K]})."""
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, step)
        with placement.autocast(), pytorch_ops(placement.torch_device), warnings.catch_warnings():
            # vmap notes that the LAM whitening's in-place lerp_ of its running statistics runs seed by seed (two
            # tiny ops); any other op without a batching rule still warns, once, as it may cost real time
            warnings.filterwarnings("ignore", message=r"There is a performance drop.*aten::lerp_")
            try:
                losses, extras, terms = self.loss(self.params, self.buffers, *inputs)  # [K], {name: [K]} x 2
            except (RuntimeError, NotImplementedError) as err:  # e.g. the MoE's routing: nonzero() has no fixed shape
                first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
                raise WorldbenchError(f"{self.stage}: this model cannot be trained seed-batched, vmap cannot batch "
                                      f"one of its operations ({first}); train its seeds one at a time") from err
        self.optimizer.zero_grad(set_to_none=True)
        trained = losses + sum(terms.values()) if terms else losses  # [K]: train_stage trains on the terms too
        trained.sum().backward()  # slice k of each .grad is d trained_k / d params_k: nothing mixes the seeds
        clip_grad_norm_per_seed_([p.grad for p in self.params.values() if p.grad is not None], self.config.grad_clip)
        self.optimizer.step()
        if self.averages is not None:
            decay = min(self.config.ema, (1 + step) / (10 + step))  # WeightAverage.update's ramp
            live = {**self.params, **self.buffers}
            torch._foreach_lerp_(list(self.averages.values()), [live[name].detach() for name in self.averages],
                                 1 - decay)
        return losses, {**extras, **terms}

    def unstack_into(self, states: list[SeedState]) -> None:
        """Copy slice k of the weights, buffers, optimiser state and weight average into seed k's own objects."""
        with torch.no_grad():
            for k, state in enumerate(states):
                for name, stacked in self.params.items():
                    parameter = state.model.get_parameter(name)
                    parameter.copy_(stacked[k])
                    if moments := self.optimizer.state.get(stacked):
                        state.optimizer.state[parameter] = {
                            key: value[k].clone() if _per_seed(key, value, stacked.shape) else value.clone()
                            for key, value in moments.items()}
                for name, stacked in self.buffers.items():
                    state.model.get_buffer(name).copy_(stacked[k])
                for own, group in zip(state.optimizer.param_groups, self.optimizer.param_groups):
                    own.update({key: value for key, value in group.items() if key != "params"})
                if self.averages is not None:
                    state.average.tensors = {name: stacked[k].clone() for name, stacked in self.averages.items()}


class SeedIntervals:
    """train.LogInterval for K seeds: per-seed sums since the last log point, kept on the device."""

    def __init__(self, count: int, device: torch.device):
        self.loss = torch.zeros(count, dtype=torch.float64, device=device)  # [K]
        self.extras: dict[str, torch.Tensor] = {}  # name -> [K]
        self.bad_step = torch.full((count,), -1, dtype=torch.int64, device=device)  # first non-finite, 1-based
        self.bad_loss = torch.zeros(count, dtype=torch.float64, device=device)
        self.started = time.perf_counter()

    def add(self, step: int, losses: torch.Tensor, extras: dict[str, torch.Tensor]) -> None:
        values = losses.detach().double()  # [K]
        first_bad = (self.bad_step < 0) & ~torch.isfinite(values)
        self.bad_step = torch.where(first_bad, step, self.bad_step)
        self.bad_loss = torch.where(first_bad, values, self.bad_loss)
        self.loss += values
        for key, extra in extras.items():
            self.extras[key] = self.extras.get(key, 0.0) + extra.detach().double()

    def close(self, step: int, last_logged: int) -> tuple[list[dict], list[tuple[int, float] | None], float]:
        """(each seed's curve row, each seed's (step, loss) of its first non-finite loss or None, seconds)."""
        bad_step, bad_loss = self.bad_step.tolist(), self.bad_loss.tolist()  # the one wait per log interval
        steps = step - last_logged
        elapsed = time.perf_counter() - self.started
        losses = self.loss.tolist()
        extras = {key: total.tolist() for key, total in self.extras.items()}
        rows = [{"step": step, "loss": losses[k] / steps, "it_per_s": steps / elapsed,
                 **{key: totals[k] / steps for key, totals in extras.items()}} for k in range(len(losses))]
        bad = [(s, loss) if s >= 0 else None for s, loss in zip(bad_step, bad_loss)]
        return rows, bad, elapsed


# ----------------------------------------------------------------------------- the loop

def initial_model(build: Callable[[], nn.Module], config: StageConfig, seed: int,
                  placement: Placement = CPU) -> nn.Module:
    """Seed `seed`'s model before its first step, as stages.py builds it and train_stage perturbs and places it.

    Leaves the global RNG where the per-seed run has it when training starts (the dynamics' masks draw on).
    """
    torch.manual_seed(seed)
    model = build()  # stages.py: torch.manual_seed(seed) then the constructor
    if config.init_noise:
        perturb_initial_weights(model, config.init_noise, seed)  # its own generator: the global RNG is untouched
    return model.to(placement.torch_device)


def _prepare(stage: str, build: Callable[[], nn.Module], config: StageConfig, seed: int,
             checkpoint: Path | None, config_json: str, placement: Placement) -> SeedState:
    """Seed `seed`'s model, optimiser, sampler and RNG state exactly as train_stage starts or resumes them."""
    device = placement.torch_device
    model = initial_model(build, config, seed, placement)
    state = SeedState(seed, model, lookup("optimizer", config.optimizer)(model, config),  # train_stage's optimiser
                      torch.Generator().manual_seed(seed), WeightAverage(model, config.ema) if config.ema else None)
    if checkpoint is not None and checkpoint.exists():
        payload = load_checkpoint(checkpoint, stage, config_json)
        state.step = restore(payload, model, state.optimizer, state.sampler, state.result, device, state.average)
        state.finished = bool(payload["finished"])
    _capture_rng(state, device)  # after the constructor (or the restore): where this seed's masks draw from
    model.train()
    return state


def _write_checkpoints(stage: str, config_json: str, states: list[SeedState], paths: list[Path], step: int,
                       finished: bool, device: torch.device) -> None:
    for state, path in zip(states, paths):
        if state.diverged is None:
            with seed_rng(state, device):  # snapshot records the global RNG state: this seed's
                payload = snapshot(stage, config_json, step, finished, state.model, state.optimizer, state.sampler,
                                   state.result, device, state.average)
            save_checkpoint(path, payload)


def train_seeds(stage: str, build: Callable[[], nn.Module], config: StageConfig, seeds: Sequence[int],
                sample_batch: BatchSampler | Sequence[BatchSampler], *, checkpoints: Sequence[Path] | None = None,
                config_json: str = "", progress: Sequence[ProgressHook | None] | None = None,
                placement: Placement = CPU) -> list[SeedOutcome]:
    """Train `stage` for every seed in `seeds` as one batched model; one outcome per seed, in order.

    build: the stage's constructor (model_builder), called after torch.manual_seed(seed) for each seed.
    sample_batch: one sampler for all seeds (shared upstream), or one per seed; each is called with that
    seed's own generator. checkpoints: one path per seed (or None: nothing written or resumed); seeds
    whose checkpoint is finished are not trained again, the rest must be at the same step.
    progress: one hook per seed, called at its log points.
    """
    if not seeds:
        raise WorldbenchError("train_seeds needs at least one seed")
    samplers = [sample_batch] * len(seeds) if callable(sample_batch) else list(sample_batch)
    paths = list(checkpoints) if checkpoints is not None else None
    hooks = list(progress) if progress is not None else [None] * len(seeds)
    if len(samplers) != len(seeds) or (paths is not None and len(paths) != len(seeds)) or len(hooks) != len(seeds):
        raise WorldbenchError(f"train_seeds: {len(seeds)} seeds need as many samplers, checkpoints and hooks")
    placement.apply()
    states = [_prepare(stage, build, config, seed, paths[k] if paths else None, config_json, placement)
              for k, seed in enumerate(seeds)]
    todo = [k for k, state in enumerate(states) if not state.finished]
    if todo:
        _train(stage, [states[k] for k in todo], config, [samplers[k] for k in todo],
               [paths[k] for k in todo] if paths else None, config_json, [hooks[k] for k in todo], placement)
    return [SeedOutcome(state.seed, state.model, state.result, state.diverged) for state in states]


def _train(stage: str, states: list[SeedState], config: StageConfig, samplers: list[BatchSampler],
           paths: list[Path] | None, config_json: str, hooks: list[ProgressHook | None],
           placement: Placement) -> None:
    device = placement.torch_device
    if len({state.step for state in states}) != 1:
        raise WorldbenchError(f"{stage}: the seeds' checkpoints are at different steps "
                              f"({sorted({state.step for state in states})}); a batched run resumes only seeds that "
                              f"stopped together: delete them or train those seeds one at a time")
    step = last_logged = states[0].step
    stacked = StackedSeeds(stage, states, config)
    draws_masks = isinstance(states[0].model, Dynamics)  # the only loss that draws from the global RNG
    interval = SeedIntervals(len(states), device)
    while step < config.steps:
        drawn = [sample(state.sampler) for state, sample in zip(states, samplers)]  # per seed: tuples of [B, ...]
        inputs = tuple(torch.stack(parts).to(device, non_blocking=True) for parts in zip(*drawn))  # each [K, B, ...]
        if draws_masks:  # outside vmap, one seed at a time, each from its own copy of the global RNG
            masks = []
            for k, state in enumerate(states):
                with seed_rng(state, device):
                    masks.append(draw_loss_inputs(state.model, tuple(part[k] for part in inputs)))
            inputs += tuple(torch.stack(parts) for parts in zip(*masks))  # [K, B, T, P]
        losses, extras = stacked.step(step, inputs, placement)
        interval.add(step + 1, losses, extras)
        step += 1
        if step % config.log_every and step != config.steps:
            continue
        rows, failures, elapsed = interval.close(step, last_logged)
        for state, row, failure, hook in zip(states, rows, failures, hooks):
            if state.diverged is None and failure is not None:  # as train_stage's StageDiverged, for this seed only
                state.diverged = StageDiverged(stage, *failure)
            if state.diverged is None:
                state.result.curve.append(row)
                state.result.wall_s += elapsed  # each seed's wall time is the whole batched time
                if hook:
                    hook(step, config.steps, row["loss"])
        finished = step == config.steps or all(state.diverged is not None for state in states)
        if finished or (paths and step % config.checkpoint_every == 0):
            stacked.unstack_into(states)
            if step == config.steps:
                for state in states:
                    if state.average is not None:
                        state.average.copy_to(state.model)  # as train_stage: the average is the finished model
            if paths:
                _write_checkpoints(stage, config_json, states, paths, step, step == config.steps, device)
        if finished:
            break
        interval, last_logged = SeedIntervals(len(states), device), step
    for state in states:
        state.result.peak_rss_mb = peak_rss_mb()
