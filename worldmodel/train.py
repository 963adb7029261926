"""The stage training loop: the optimizer, clipping, logging, atomic checkpoints with full RNG state.

The optimizer is a component of the `optimizer` slot (worldmodel/registry.py): a factory (model,
StageConfig) -> torch.optim.Optimizer (or anything with its param_groups, zero_grad, step and state
dicts). The anchor's AdamW is registered here (as FlatAdamW: the same numbers in fewer ops); Muon in
variants/muon.py. Loss terms that components bring (worldmodel/auxiliary.py) are added to what the
step optimises and logged under their own names.

A stage killed at any point resumes from its last checkpoint and produces exactly the losses
an uninterrupted run would have: model, optimiser, step, curve and both RNG streams (the
global torch RNG used for masking, and the batch sampler's) are all in the checkpoint.

Devices: a stage runs where its `Placement` says (CPU or CUDA; batches are sampled on the CPU
and moved). Checkpoints always hold CPU tensors, so they load anywhere. The loop never waits
for the device between log points: losses and extras are summed as tensors, and the first
non-finite loss (and its step) is tracked on the device and checked at the next log point.
"""
from __future__ import annotations

import json
import math
import pickle
import resource
import time
import zipfile
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from worldmodel.auxiliary import pop_loss_terms
from worldmodel.config import StageConfig
from worldmodel.errors import WorldbenchError
from worldmodel.files import write_atomic
from worldmodel.registry import lookup, register

CHECKPOINT_FORMAT = "worldbench-checkpoint-1"
PRECISIONS = ("fp32", "tf32", "bf16")

BatchSampler = Callable[[torch.Generator], tuple]
ProgressHook = Callable[[int, int, float], None]  # (step, total steps, last loss)


class StageDiverged(Exception):
    def __init__(self, stage: str, step: int, loss: float):
        super().__init__(f"{stage} loss became {loss} at step {step}")
        self.stage, self.step, self.loss = stage, step, loss


@dataclass(frozen=True)
class Placement:
    """Where a stage runs: a torch device and a precision.

    fp32: plain float32 everywhere.  tf32: float32 with TF32 matmuls/convolutions (CUDA only).
    bf16: the training forward under CUDA autocast to bfloat16; evaluation stays float32.
    """
    device: str = "cpu"
    precision: str = "fp32"

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise WorldbenchError(f"precision '{self.precision}' is not one of: {', '.join(PRECISIONS)}")
        if self.precision != "fp32" and torch.device(self.device).type != "cuda":
            raise WorldbenchError(f"precision '{self.precision}' needs a CUDA device (this run is on "
                                  f"{self.device}); use precision = \"fp32\" or --device cuda")

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def apply(self) -> None:
        """Set the process-wide float32 matmul mode for this placement (workers are reused)."""
        if self.torch_device.type == "cuda":
            tf32 = self.precision in ("tf32", "bf16")
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32

    def autocast(self):
        """Context for the training forward pass."""
        if self.precision == "bf16":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return nullcontext()


CPU = Placement()


@dataclass
class TrainResult:
    curve: list[dict] = field(default_factory=list)  # one row per log point: step, loss, it_per_s, extras
    wall_s: float = 0.0  # training time summed over every attempt (resumes included)
    peak_rss_mb: float = 0.0


def peak_rss_mb() -> float:
    """Peak resident memory of this process since start or since the last reset_peak_rss()."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def reset_peak_rss() -> None:
    """Restart the peak-memory count (Linux), so a worker process reused for several runs reports each."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


# ----------------------------------------------------------------------------- checkpoints

def to_cpu(value):
    """Tensors anywhere inside dicts/lists/tuples moved to the CPU (checkpoints are device-independent)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(item) for item in value)
    return value


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write atomically, so a kill never leaves a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: torch.save(to_cpu(payload), tmp))


def load_checkpoint(path: Path, stage: str, config_json: str) -> dict:
    """Load a checkpoint safely (no pickle execution) and check it belongs to this stage config."""
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise WorldbenchError(f"checkpoint '{path}' does not exist; train the stage first") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WorldbenchError(
            f"checkpoint '{path}' is corrupted or not a plain-tensor worldbench checkpoint ({first[:120]}); "
            f"delete it to retrain the stage"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise WorldbenchError(f"checkpoint '{path}' is not a worldbench checkpoint; delete it to retrain the stage")
    if payload.get("stage") != stage or payload.get("config") != config_json:
        theirs = json.loads(payload.get("config") or "{}")
        ours = json.loads(config_json)
        diff = next((k for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)), "stage")
        raise WorldbenchError(
            f"checkpoint '{path}' was trained for another config ({payload.get('stage')}, '{diff}': "
            f"{theirs.get(diff)!r} vs {ours.get(diff)!r} now); delete it or point at the right one"
        )
    return payload


def load_weights(model: nn.Module, path: Path, stage: str, config_json: str) -> nn.Module:
    payload = load_checkpoint(path, stage, config_json)
    if not payload.get("finished"):
        raise WorldbenchError(f"checkpoint '{path}' is from an unfinished {stage} stage; finish training it first")
    model.load_state_dict(payload["model"], strict=True)
    return model


# ----------------------------------------------------------------------------- training loop

class FlatAdamW(torch.optim.AdamW):
    """torch.optim.AdamW(foreach=True), element for element, stepping one flat buffer instead of ~100 tensors.

    On the CPU a foreach op is a loop over the tensors, so at these model sizes the ten or so ops per parameter
    tensor of an AdamW step cost several percent of a training step. Here the parameters and their two moments
    are views into three flat buffers, and a step runs AdamW's ops (the same ops, in the same order, on the same
    values) once on each buffer, after one copy of the gradients into a fourth: the same numbers, bit for bit.
    The state dict is AdamW's, tensor per parameter, so checkpoints, resuming and seed-batching read it as
    before. As AdamW does, a step leaves a parameter without a gradient (and its state) as it is. Every other
    step is AdamW's own: on a GPU (whose foreach kernels are already batched, and round their own way), with
    several groups or dtypes, a non-contiguous parameter, options other than AdamW's defaults, or step counts
    that differ between the parameters stepped.
    """

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 1e-2, **options):
        super().__init__(params, lr=lr, weight_decay=weight_decay, **{"foreach": True, **options})
        self._flat: _FlatState | None = None

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None or not self._flat_step_possible():
            self._flat = None  # AdamW's own step may leave the step counts unequal: gather afresh next time
            return super().step(closure)
        group, flat = self.param_groups[0], self._flat
        lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        grads = torch.cat([p.grad.reshape(-1) for p in flat.stepped])  # [N]
        flat.steps.add_(1.0)  # every parameter's state["step"], counted as AdamW counts it
        flat.step += 1
        # torch.optim.adam._multi_tensor_adam's update, each op once over a whole buffer
        if weight_decay != 0:
            flat.params.mul_(1 - lr * weight_decay)
        flat.exp_avgs.lerp_(grads, 1 - beta1)
        flat.exp_avg_sqs.mul_(beta2)
        flat.exp_avg_sqs.addcmul_(grads, grads, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** float(flat.step)
        bias_correction2 = 1 - beta2 ** float(flat.step)
        denominator = flat.exp_avg_sqs.sqrt()
        denominator.div_(bias_correction2**0.5)
        denominator.add_(eps)
        flat.params.addcdiv_(flat.exp_avgs, denominator, value=(lr / bias_correction1) * -1)
        return None

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._flat = None  # the loaded state tensors are new ones: gather them at the next step

    def _flat_step_possible(self) -> bool:
        """Whether this step can run on the flat buffers (gathering them first when needed)."""
        if len(self.param_groups) != 1:
            return False
        group = self.param_groups[0]
        if (group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"] or group["fused"]
                or not group.get("decoupled_weight_decay", True) or isinstance(group["lr"], torch.Tensor)
                or any(isinstance(beta, torch.Tensor) for beta in group["betas"])):
            return False
        stepped = [p for p in group["params"] if p.grad is not None]  # AdamW skips the others
        if not stepped or any(p.grad.is_sparse for p in stepped):
            return False
        if self._flat is None or not self._flat.holds(stepped, self.state):
            self._flat = _FlatState.gather(stepped, self.state)
        return self._flat is not None


@dataclass
class _FlatState:
    """FlatAdamW's buffers: every parameter stepped, and each AdamW state tensor of one, is a view into one of them."""
    params: torch.Tensor  # [N]
    exp_avgs: torch.Tensor  # [N]
    exp_avg_sqs: torch.Tensor  # [N]
    steps: torch.Tensor  # [n parameters]: each parameter's state["step"] is a 0-d view
    step: int  # the step count they all share
    stepped: list[nn.Parameter]  # the parameters they hold, in order
    views: list[torch.Tensor]  # each one's data
    states: list[dict]  # each one's AdamW state: its step count and moments, views too

    @staticmethod
    def gather(params: list[nn.Parameter], state: dict) -> "_FlatState | None":
        """Copy the parameters and their AdamW state into flat buffers and make them views of those; None when
        the parameters are not all contiguous CPU tensors of one dtype, or some have state and others not, or their
        step counts differ."""
        if (len({(p.device, p.dtype) for p in params}) != 1 or params[0].device.type != "cpu"
                or not all(p.is_contiguous() for p in params)):  # a view keeps a contiguous tensor's strides only
            return None
        own = [state.get(p, {}) for p in params]
        if any(own) and not all(own):
            return None
        counts = {float(s["step"]) for s in own} if all(own) else {0.0}  # no state yet: AdamW's step 0
        if len(counts) != 1:
            return None
        (step,) = counts
        values = _concatenated(params)
        if all(own):
            step_dtype = own[0]["step"].dtype
            exp_avgs = _concatenated([s["exp_avg"] for s in own])
            exp_avg_sqs = _concatenated([s["exp_avg_sq"] for s in own])
        else:  # AdamW's initial state: a step count in the default scalar dtype, zero moments
            step_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
            exp_avgs, exp_avg_sqs = torch.zeros_like(values), torch.zeros_like(values)
        # a step count stays on the CPU, as AdamW keeps it without capturable or fused
        flat = _FlatState(params=values, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs,
                          steps=torch.full((len(params),), step, dtype=step_dtype), step=int(step), stepped=params,
                          views=[], states=[])
        offset = 0
        for index, p in enumerate(params):
            part = slice(offset, offset + p.numel())
            p.data = flat.params[part].view_as(p)
            flat.views.append(p.data)
            state[p] = {"step": flat.steps[index], "exp_avg": flat.exp_avgs[part].view_as(p),
                        "exp_avg_sq": flat.exp_avg_sqs[part].view_as(p)}
            flat.states.append(dict(state[p]))
            offset += p.numel()
        return flat

    def holds(self, params: list[nn.Parameter], state: dict) -> bool:
        """Whether these are the parameters the buffers hold, and they and their state are still the buffers' views
        (nothing re-pointed a parameter's data or replaced a state tensor)."""
        return len(params) == len(self.views) and all(
            p.data_ptr() == view.data_ptr() and all(state[p].get(key) is value for key, value in own.items())
            for p, view, own in zip(params, self.views, self.states))


def _concatenated(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors' values one after another: [N] (a new buffer)."""
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    return FlatAdamW(model.parameters(), lr=lr, weight_decay=weight_decay)


@register("optimizer", "adamw")
def adamw(model: nn.Module, config: StageConfig) -> torch.optim.AdamW:
    """The anchor's AdamW (Loshchilov & Hutter 2019) on every parameter, the stage's lr and weight decay."""
    return make_optimizer(model, config.lr, config.weight_decay)


def update(model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, grad_clip: float) -> None:
    """One optimiser step: backward, clip the global gradient norm, AdamW (the benchmarks time this too)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
    optimizer.step()


INIT_NOISE_STREAM = 0x1A17  # init_noise draws from its own generator: (this << 32) | the stage seed


def perturb_initial_weights(model: nn.Module, scale: float, seed: int) -> None:
    """Multiply every weight by (1 + scale * N(0, 1)): the same model with different float rounding."""
    generator = torch.Generator().manual_seed(INIT_NOISE_STREAM << 32 | seed)
    with torch.no_grad():
        for parameter in model.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            parameter.mul_((1 + scale * noise).to(parameter.dtype).to(parameter.device))


class WeightAverage:
    """An exponential moving average of a model's floating-point weights and buffers (state_dict entries).

    The decay ramps up as min(decay, (1 + step) / (10 + step)), so the first steps' weights do not linger.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.tensors = {name: value.detach().clone() for name, value in model.state_dict().items()
                        if value.is_floating_point()}

    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        live = model.state_dict()
        torch._foreach_lerp_(list(self.tensors.values()), [live[name].detach() for name in self.tensors], 1 - decay)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict({**model.state_dict(), **self.tensors}, strict=True)


def learning_rate(config: StageConfig, step: int) -> float:
    """Linear warmup, then constant (the anchor) or, with lr_decay = "cosine", a cosine to lr / 10 at the last step."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_decay == "cosine":
        progress = (step - config.warmup_steps) / max(1, config.steps - 1 - config.warmup_steps)  # 0 -> 1
        return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
    return config.lr


class LogInterval:
    """Sums over the steps since the last log point, kept on the device so that no step waits for it."""

    def __init__(self, device: torch.device):
        # float64 sums: the same numbers per-step float() sums would give
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.extras: dict[str, torch.Tensor | float] = {}
        self.bad_step = torch.full((), -1, dtype=torch.int64, device=device)  # first non-finite loss, 1-based
        self.bad_loss = torch.zeros((), dtype=torch.float64, device=device)
        self.started = time.perf_counter()

    def add(self, step: int, loss: torch.Tensor, extras: dict) -> None:
        value = loss.detach().double()
        first_bad = (self.bad_step < 0) & ~torch.isfinite(value)
        self.bad_step = torch.where(first_bad, step, self.bad_step)
        self.bad_loss = torch.where(first_bad, value, self.bad_loss)
        self.loss += value
        for key, extra in extras.items():
            extra = extra.detach().double() if isinstance(extra, torch.Tensor) else float(extra)
            self.extras[key] = self.extras.get(key, 0.0) + extra

    def close(self, stage: str, step: int, last_logged: int) -> tuple[dict, float]:
        """(the curve row for steps last_logged+1..step, seconds they took); StageDiverged on a bad loss."""
        diverged_at = int(self.bad_step)  # the one wait for the device per log interval
        if diverged_at >= 0:
            raise StageDiverged(stage, diverged_at, float(self.bad_loss))
        steps = step - last_logged
        total_loss = float(self.loss)
        elapsed = time.perf_counter() - self.started
        row = {"step": step, "loss": total_loss / steps, "it_per_s": steps / elapsed,
               **{key: float(total) / steps for key, total in self.extras.items()}}
        return row, elapsed


def restore(payload: dict, model: nn.Module, optimizer: torch.optim.Optimizer, sampler: torch.Generator,
            result: TrainResult, device: torch.device, average: WeightAverage | None = None) -> int:
    """Put a checkpoint's weights, optimiser, RNG states and curve back; returns its step."""
    model.load_state_dict(payload["model"], strict=True)
    if average is not None and not payload["finished"]:
        average.tensors = {name: value.to(device) for name, value in payload["ema"].items()}
    optimizer.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["rng_torch"])
    if device.type == "cuda" and "rng_cuda" in payload:
        torch.cuda.set_rng_state(payload["rng_cuda"], device)
    sampler.set_state(payload["rng_sampler"])
    result.curve = json.loads(payload["curve"])
    result.wall_s = float(payload["wall_s"])
    if payload["finished"]:
        result.peak_rss_mb = float(payload["peak_rss_mb"])
    return int(payload["step"])


def snapshot(stage: str, config_json: str, step: int, finished: bool, model: nn.Module,
             optimizer: torch.optim.Optimizer, sampler: torch.Generator, result: TrainResult,
             device: torch.device, average: WeightAverage | None = None) -> dict:
    """Everything a resumed run needs to continue bit for bit.

    With a weight average, a finished checkpoint's model is the average (what evaluation and the
    downstream stages use); an unfinished one keeps the live weights and the average beside them.
    """
    payload = {
        "format": CHECKPOINT_FORMAT, "stage": stage, "config": config_json, "step": step,
        "finished": finished, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "rng_torch": torch.get_rng_state(), "rng_sampler": sampler.get_state(),
        "curve": json.dumps(result.curve), "wall_s": result.wall_s, "peak_rss_mb": peak_rss_mb(),
    }
    if average is not None and not finished:
        payload["ema"] = average.tensors
    if device.type == "cuda":
        payload["rng_cuda"] = torch.cuda.get_rng_state(device)
    return payload


def train_stage(
    stage: str,
    model: nn.Module,
    config: StageConfig,
    sample_batch: BatchSampler,
    checkpoint_path: Path,
    config_json: str,
    seed: int,
    progress: ProgressHook | None = None,
    placement: Placement = CPU,
) -> TrainResult:
    """Train `model` with `model.loss(*sample_batch(generator))`, resuming from `checkpoint_path`.

    The model is moved to `placement`'s device (before the optimiser is built); batches follow it.
    """
    device = placement.torch_device
    placement.apply()
    if config.init_noise:
        perturb_initial_weights(model, config.init_noise, seed)
    model.to(device)
    optimizer = lookup("optimizer", config.optimizer)(model, config)
    sampler = torch.Generator().manual_seed(seed)
    average = WeightAverage(model, config.ema) if config.ema else None
    result, step = TrainResult(), 0
    if checkpoint_path.exists():
        payload = load_checkpoint(checkpoint_path, stage, config_json)
        step = restore(payload, model, optimizer, sampler, result, device, average)
        if payload["finished"]:
            return result

    model.train()
    interval = LogInterval(device)
    while step < config.steps:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        batch = tuple(t.to(device, non_blocking=True) for t in sample_batch(sampler))
        with placement.autocast():
            loss, extras = model.loss(*batch)
        # Component terms (an MoE's load balance) are trained on, and logged beside the model's own loss, not in it.
        terms = pop_loss_terms(model)
        interval.add(step + 1, loss, {**extras, **terms})
        update(model, optimizer, loss + sum(terms.values()) if terms else loss, config.grad_clip)
        if average is not None:
            average.update(model, step)
        step += 1
        if step == config.steps and average is not None:
            average.copy_to(model)
        if step % config.log_every == 0 or step == config.steps:
            row, elapsed = interval.close(stage, step, result.curve[-1]["step"] if result.curve else 0)
            result.curve.append(row)
            result.wall_s += elapsed
            if progress:
                progress(step, config.steps, row["loss"])
            if step % config.checkpoint_every == 0 or step == config.steps:
                save_checkpoint(checkpoint_path, snapshot(stage, config_json, step, step == config.steps, model,
                                                          optimizer, sampler, result, device, average))
            interval = LogInterval(device)
    result.peak_rss_mb = peak_rss_mb()
    return result
