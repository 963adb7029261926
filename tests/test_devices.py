"""Device independence, checked on the CPU: no fixed-device tensors in model code, no per-step host
syncs in the training loop, --device and precision handling, device-free checkpoints."""
from __future__ import annotations

import traceback
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness.cli import main
from harness.store import Store
import variants  # noqa: F401  (registers windowed_attention)
from worldmodel import kernels, stages
from worldmodel.config import WorldModelConfig
from worldmodel.data import VideoWindows, generate
from worldmodel.dynamics import Dynamics
from worldmodel.errors import WorldbenchError
from worldmodel.lam import LatentActionModel
from worldmodel.rollout import evaluate_rollouts, rollout_clips
from worldmodel.tokenizer import VideoTokenizer
from worldmodel.train import Placement, train_stage

from tiny import tiny_config as shared_tiny_config

WORLDMODEL = Path(stages.__file__).parent
VARIANTS = WORLDMODEL.parent / "variants"


def tiny_config(encoder: str = "meanpool_concat") -> WorldModelConfig:
    return shared_tiny_config(steps=12, log_every=6, checkpoint_every=12, maskgit_steps=3, encoder=encoder)


@pytest.fixture(scope="module")
def data():
    return generate("sprite_world", 8, 12, 16, seed=0)


# ----------------------------------------------------------------------------- no fixed-device factories

@pytest.mark.parametrize("encoder", ["meanpool_concat", "windowed_attention"])
def test_model_code_creates_every_tensor_on_its_inputs_device(data, monkeypatch, encoder):
    """Under a `meta` default device, a factory call without a device makes a meta tensor, and the
    first op mixing it with the (CPU) model or inputs raises: so every loss, MaskGIT decoding and
    the whole rollout evaluation passing here means none of them pins a device."""
    monkeypatch.setenv(kernels.ENV_VAR, "torch")  # the native kernels are CPU-only by design
    torch.manual_seed(0)
    config = tiny_config(encoder)
    tokenizer, lam, dynamics = VideoTokenizer(config), LatentActionModel(config), Dynamics(config)
    frames = VideoWindows(data, config.window, "train", 0.25).batch([0, 1])[0]
    clips = rollout_clips(data, config, 0.25)
    codes = torch.randint(dynamics.fsq.codebook_size, (2, config.window, (16 // config.patch_size) ** 2))
    actions = torch.randn(2, config.window - 1, config.action_dim).sign()
    with torch.device("meta"):
        assert torch.zeros(1).device.type == "meta"  # the trap is set
        for loss, extras in (tokenizer.loss(frames), lam.loss(frames), dynamics.loss(codes, actions)):
            loss.backward()
            assert loss.device.type == "cpu" and all(v.device.type == "cpu" for v in extras.values())
        context = dynamics.fsq.from_indices(codes[:, :-1])
        for temperature in (0.0, 1.0):
            predicted = dynamics.predict_next(context, actions, rounds=3, temperature=temperature)
            assert predicted.device.type == "cpu"
        result = evaluate_rollouts(tokenizer, lam, dynamics, clips, config)
    assert result.ground_truth.shape[0] == clips.shape[0]


def test_native_kernels_take_only_float32_cpu_tensors(monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "native")
    cpu = torch.zeros(2, 3)
    assert kernels.use_native(cpu)
    assert not kernels.use_native(torch.zeros(2, 3, device="meta"))  # stands in for cuda: any non-CPU device
    assert not kernels.use_native(cpu, torch.zeros(2, 3, device="meta"))
    for dtype in (torch.float64, torch.bfloat16, torch.float16):
        assert not kernels.use_native(cpu.to(dtype))



def test_a_run_records_which_kernels_computed_it(monkeypatch):
    """The SIMD level of PyTorch's kernels and the PyTorch ops instead of the native ones each change the float
    rounding under the same run id, so the runs table says which computed a run."""
    from harness.worker import device_label

    capability = torch.backends.cpu.get_cpu_capability()
    monkeypatch.setenv(kernels.ENV_VAR, "native")
    assert device_label("cpu") == f"cpu (ATen {capability}, native kernels)"
    monkeypatch.setenv(kernels.ENV_VAR, "torch")
    assert device_label("cpu") == f"cpu (ATen {capability}, PyTorch ops)"


AUTOCAST_SCRIPT = """
import sys, torch
sys.path.insert(0, "tests")
from tiny import tiny_config
from worldmodel.lam import LatentActionModel
from worldmodel.tokenizer import VideoTokenizer
torch.manual_seed(0)
config = tiny_config()
frames = torch.rand(2, config.window, 3, 16, 16) * 2 - 1
for model in (VideoTokenizer(config), LatentActionModel(config)):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model.loss(frames)
    loss.float().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.isfinite(loss.float()) and grads and all(torch.isfinite(g).all() for g in grads), type(model)
print("finite")
"""


def test_bf16_autocast_forward_backward_on_the_cpu_is_finite_with_native_kernels(monkeypatch):
    """Under CPU bf16 autocast a float32 input can give bf16 activations: they must take the PyTorch path,
    never reach the native kernels (which corrupted the heap: malloc(): invalid size, exit 134).
    Run in a subprocess so that a crash is a failed test, not a dead test runner."""
    import subprocess
    import sys

    env = {**__import__("os").environ, kernels.ENV_VAR: "native"}
    done = subprocess.run([sys.executable, "-c", AUTOCAST_SCRIPT], cwd=WORLDMODEL.parent, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "finite" in done.stdout, done.stderr[-2000:]


@pytest.mark.parametrize("call", ["swiglu_bf16", "swiglu_width", "rmsnorm_shapes", "filmnorm_shapes",
                                  "attention_heads", "attention_bf16"])
def test_native_kernels_refuse_what_they_cannot_read_instead_of_corrupting_memory(monkeypatch, call):
    monkeypatch.setenv(kernels.ENV_VAR, "native")
    x = torch.randn(2, 3, 4, 16)
    calls = {
        "swiglu_bf16": lambda: kernels.swiglu(torch.randn(4, 32, dtype=torch.bfloat16)),
        "swiglu_width": lambda: kernels.swiglu(torch.randn(4, 24)),
        "rmsnorm_shapes": lambda: kernels.add_rmsnorm(x, x[..., :8], torch.ones(16), 1e-6),
        "filmnorm_shapes": lambda: kernels.add_filmnorm(x, x, torch.randn(2, 3, 16), 1e-5),
        "attention_heads": lambda: kernels.attention(torch.randn(2, 5, 30), 4, False, 1),
        "attention_bf16": lambda: kernels.attention(torch.randn(2, 5, 48, dtype=torch.bfloat16), 4, False, 1),
    }
    with pytest.raises(WorldbenchError) as err:
        calls[call]()
    assert "native" in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- training loop

SYNCS = ("item", "__float__", "__int__", "__bool__")


def test_training_loop_reads_the_device_only_at_log_points(data, monkeypatch, tmp_path):
    """Counting every tensor -> Python read made from worldmodel/variants code during training:
    it must scale with the log points (2 here), not with the steps (12)."""
    config = tiny_config()
    train = VideoWindows(data, config.window, "train", 0.25)
    reads: Counter = Counter()
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            caller = Path(traceback.extract_stack(limit=2)[0].filename).resolve()
            if WORLDMODEL in caller.parents or VARIANTS in caller.parents:
                reads[(_name, caller.name)] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    model = LatentActionModel(config)
    result = train_stage("actions", model, config.actions, stages.sampler(train, 4),
                         tmp_path / "a.pt", "{}", seed=0)
    log_points = len(result.curve)
    extras = len([key for key in result.curve[0] if key not in ("step", "loss", "it_per_s")])
    assert log_points == 2
    assert sum(reads.values()) <= log_points * (2 + extras), reads  # divergence check + loss + extras


def test_checkpoints_are_moved_to_the_cpu_whole(tmp_path):
    from worldmodel.train import to_cpu

    weight = torch.ones(3, requires_grad=True)
    moved = to_cpu({"model": {"w": weight}, "state": [{"t": torch.ones(2)}, (torch.zeros(1), 2)], "n": 1})
    assert moved["n"] == 1 and isinstance(moved["state"][1], tuple) and moved["state"][1][1] == 2
    assert not moved["model"]["w"].requires_grad and torch.equal(moved["model"]["w"], weight.detach())
    with pytest.raises(NotImplementedError):  # a meta tensor holds no data: proof that every leaf is copied
        to_cpu({"deep": [{"w": torch.zeros(3, device="meta")}]})


def test_reduced_precision_needs_cuda():
    with pytest.raises(Exception, match="needs a CUDA device"):
        Placement("cpu", "bf16")
    with pytest.raises(Exception, match="not one of: fp32, tf32, bf16"):
        Placement("cpu", "fp8")
    assert Placement("cpu", "fp32").autocast() is not None


# ----------------------------------------------------------------------------- command line and store

def test_device_cuda_without_cuda_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main(["run", "--device", "cuda", "--profile", "smoke", "--results", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "no CUDA device found; use --device cpu" in err and len(err.splitlines()) == 1, err
    from harness.cli import resolve_device
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("precision, expected", [
    ("bf16", 'profiles.p.precision = "bf16" needs a CUDA device (running on cpu)'),
    ("fp8", "profiles.p.precision: 'fp8' is not allowed; use one of: bf16, fp32, tf32"),
])
def test_profile_precision_is_checked_before_any_run(tmp_path, capsys, precision, expected):
    suite = tmp_path / "bench.toml"
    suite.write_text(f'[profiles.p]\nprecision = "{precision}"\n')
    code = main(["run", "--config", str(suite), "--profile", "p", "--device", "cpu",
                 "--results", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and expected in " ".join(err.split()) and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r" / "store").exists()


def test_precision_joins_the_stage_ids_only_when_not_fp32(tmp_path):
    from harness.matrix import plan_runs
    from harness.suite import build_suite

    suite = build_suite({"profiles": {"a": {}, "b": {"precision": "bf16"}}})
    plain = plan_runs(suite, "default", "sprite_world", ["meanpool_concat"], [0])[0]
    same = plan_runs(suite, "a", "sprite_world", ["meanpool_concat"], [0])[0]
    bf16 = plan_runs(suite, "b", "sprite_world", ["meanpool_concat"], [0])[0]
    assert plain.stage_ids == same.stage_ids and plain.precision == "fp32"
    assert bf16.precision == "bf16" and set(bf16.stage_ids.values()).isdisjoint(plain.stage_ids.values())
    assert '"precision": "bf16"' in bf16.resolved_json() and "precision" not in plain.resolved_json()


@pytest.mark.parametrize("old_key", ["0old", "zold"])  # the old part's schema read first, or the new one's
def test_runs_recorded_before_the_precision_column_read_as_fp32(tmp_path, old_key):
    from harness.store import TABLES

    store = Store(tmp_path / "results")
    folder = store.table_dir("runs")
    folder.mkdir(parents=True)
    row = {c: "" for c in TABLES["runs"]} | {"seed": 0, "diverged_step": -1, "git_dirty": False, "load_avg_1m": 0.5}
    old = pd.DataFrame([row | {"run_id": "old"}]).drop(columns=["precision", "load_avg_1m", "batch"])
    old.to_parquet(folder / f"part-{old_key}.parquet", index=False)
    store.append("runs", [row | {"run_id": "new", "precision": "bf16", "batch": "b1"}], "new")
    runs = store.runs().set_index("run_id")
    assert runs.loc["old", "precision"] == "fp32" and runs.loc["new", "precision"] == "bf16"
    # the machine load and scheduling batch came later too: unknown for old runs (so their timing never blocks)
    assert pd.isna(runs.loc["old", "load_avg_1m"]) and runs.loc["old", "batch"] == ""
    assert runs.loc["new", "load_avg_1m"] == 0.5 and runs.loc["new", "batch"] == "b1"
