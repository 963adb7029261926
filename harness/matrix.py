"""Run specs: (profile, dataset, variant, seed) resolved to configs and content-addressed stage ids.

A stage id hashes what the stage's result depends on: its resolved config, its upstream stage
ids, the dataset, the seed and the source of the code it runs. Variants that differ only in the
LAM therefore share the tokenizer stage of a seed: it is trained once and the seeds pair up.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import asdict, dataclass
from itertools import chain, zip_longest
from pathlib import Path

import variants
import worldmodel
from harness.schema import Suite
from worldmodel.config import STAGES, WorldModelConfig
from worldmodel.stages import decoding_json, stage_config_json

UPSTREAM = {"tokenizer": (), "actions": (), "dynamics": ("tokenizer", "actions")}
WORLDMODEL_DIR = Path(worldmodel.__file__).parent
VARIANTS_DIR = Path(variants.__file__).parent
# Source each stage runs; a change to any of these files retrains that stage.
# batched.py trains stages too (bench run --seed-batch), into the same stage folders as the per-seed loop
SHARED_SOURCES = ["config.py", "layers.py", "norms.py", "fused.py", "fsq.py", "train.py", "batched.py", "stages.py",
                  "metrics.py", "errors.py", "files.py", "auxiliary.py", "data/*.py", "kernels/*.py", "kernels/*.cpp",
                  "kernels/*.h"]
STAGE_SOURCES = {
    # Every stage looks components up (its ffn, position code, optimizer), which may live in variants/.
    "tokenizer": ["tokenizer.py", "registry.py", "VARIANTS"],
    "actions": ["lam.py", "registry.py", "VARIANTS"],  # lam.py holds the baseline encoder, variants/ the others
    "dynamics": ["dynamics.py", "registry.py", "VARIANTS"],  # its action_input component may live in variants/
}


KPI_SOURCE = hashlib.sha256(Path(__file__).with_name("kpis.py").read_bytes()).hexdigest()[:16]


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def source_hash(patterns: list[str]) -> str:
    digest = hashlib.sha256()
    for pattern in patterns:
        files = sorted(VARIANTS_DIR.glob("*.py")) if pattern == "VARIANTS" else sorted(WORLDMODEL_DIR.glob(pattern))
        for path in files:
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def plugin_hash(modules: list[str]) -> str:
    """Hash of the source of the user's [plugins] modules: editing one retrains what it may change."""
    digest = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)  # importable: the suite loaded it already
        origin = Path(spec.origin) if spec and spec.origin and spec.origin != "built-in" else None
        digest.update(name.encode())
        if origin and origin.is_file():
            digest.update(origin.read_bytes())
    return digest.hexdigest()[:16]


def code_hash() -> str:
    """One hash of all the world-model and variant source (recorded in provenance)."""
    return source_hash([*SHARED_SOURCES, "*.py", "VARIANTS"])


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    profile: str
    dataset: str
    variant: str
    seed: int
    model: dict  # resolved WorldModelConfig as a dict
    data: dict  # resolved dataset spec
    data_id: str
    stage_ids: dict  # stage -> id
    description: str
    precision: str = "fp32"  # the profile's: fp32 | tf32 | bf16

    @property
    def config(self) -> WorldModelConfig:
        return WorldModelConfig.from_dict(self.model)

    def resolved_json(self) -> str:
        values = {"profile": self.profile, "dataset": self.data, "variant": self.variant, "seed": self.seed,
                  "model": self.model}
        if self.precision != "fp32":
            values["precision"] = self.precision
        return json.dumps(values, sort_keys=True)


def dataset_spec(suite: Suite, profile: str, dataset: str, frame_size: int) -> dict:
    spec = asdict(suite.dataset(dataset))
    spec.pop("description")
    if spec["kind"] == "procedural":
        spec.update(suite.profile(profile).data)
        spec["frame_size"] = frame_size  # rendered at the model's size
        spec["path"] = ""
    else:
        path = Path(spec["path"])
        # Identity of a user's file: its path, size and modification time (cheap, catches edits).
        stat = path.stat() if path.exists() else None
        spec["file_signature"] = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}" if stat else str(path)
    return spec


def interleave(groups: list[list[RunSpec]]) -> list[RunSpec]:
    """Round robin over the groups (one per variant or arm): a0, b0, a1, b1, ...

    Each seed's baseline and candidate runs are then adjacent in the schedule and, with --jobs 2,
    run side by side under the same machine load, so their timing KPIs pair up. A run that trains no stage of
    its own (every stage id is an earlier run's: a variant that only decodes otherwise) goes last instead:
    beside the run whose stages it shares it would only wait for them, and its timing KPIs are that run's.
    """
    planned: set[str] = set()
    training, following = [], []
    for spec in chain.from_iterable(zip_longest(*groups)):
        if spec is not None:
            ids = set(spec.stage_ids.values())
            (following if ids <= planned else training).append(spec)
            planned |= ids
    return training + following


def plan_runs(suite: Suite, profile: str, dataset: str, variant_names: list[str], seeds: list[int]) -> list[RunSpec]:
    """Seed-major order (see `interleave`): baseline s0, candidate s0, baseline s1, ..."""
    # A plugin may register a component for any stage, so its source joins every stage's id.
    plugins = [plugin_hash(suite.plugins)] if suite.plugins else []
    sources = {stage: _digest(source_hash(SHARED_SOURCES + files), *plugins) for stage, files in STAGE_SOURCES.items()}
    precision = suite.profile(profile).precision
    # A reduced precision trains other weights: it joins the stage ids (fp32, the default, adds nothing).
    numerics = [] if precision == "fp32" else [f"precision={precision}"]
    groups: list[list[RunSpec]] = []
    for variant_name in variant_names:
        specs: list[RunSpec] = []
        groups.append(specs)
        variant = suite.variant(variant_name)
        config = suite.model_config(profile, variant_name)
        data = dataset_spec(suite, profile, dataset, config.frame_size)
        data_id = _digest(json.dumps(data, sort_keys=True), source_hash(["data/*.py"]))  # game code edits regenerate data
        for seed in seeds:
            stage_ids: dict[str, str] = {}
            for stage in STAGES:
                upstream = [stage_ids[u] for u in UPSTREAM[stage]]
                stage_ids[stage] = _digest(stage, stage_config_json(config, stage), *upstream, data_id, str(seed),
                                           sources[stage], *numerics)
            # The run's own KPIs come from the rollouts, decoded as the config says, and from harness/kpis.py:
            # editing any of them re-records the run.
            rollout = (json.dumps(asdict(config.rollout), sort_keys=True) + decoding_json(config)
                       + source_hash(["rollout.py"]) + KPI_SOURCE)
            run_id = _digest(profile, dataset, variant_name, str(seed), *stage_ids.values(), rollout)
            specs.append(RunSpec(run_id, profile, dataset, variant_name, seed, config.to_dict(), data, data_id,
                                 stage_ids, variant.description, precision))
    return interleave(groups)
