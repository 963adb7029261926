"""What a suite is: the sections of bench.toml as dataclasses, their built-in defaults and the planted faults.

harness/suite.py reads a bench.toml into these (checking every key and value); everything else reads
the Suite. Every value has a default, so an empty file is a valid suite.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.types import KpiRule
from worldmodel.config import STAGES, WorldModelConfig
from worldmodel.errors import WorldbenchError



@dataclass(frozen=True)
class Slot:
    """A component slot as bench.toml sees it: the stage-config field it sets, in which stages."""
    key: str  # the field it sets in each stage's section
    stages: tuple[str, ...]  # the stages it can apply to (a variant's `scope` picks among them)
    default_scope: tuple[str, ...]  # the stages a variant's choice applies to unless its `scope` says otherwise


# The anchor puts the MoE feed-forward in the dynamics only (tinyworlds PR #20) and Muon into every stage's trainer;
# a position code or a conditioning changes every stage that has attention or a condition.
SLOTS = {
    "lam_encoder": Slot("encoder", ("actions",), ("actions",)),
    "action_input": Slot("action_input", ("dynamics",), ("dynamics",)),
    "action_injection": Slot("action_injection", ("dynamics",), ("dynamics",)),
    "maskgit_schedule": Slot("maskgit_schedule", ("dynamics",), ("dynamics",)),
    "ffn": Slot("ffn", STAGES, ("dynamics",)),
    "position": Slot("position", STAGES, STAGES),
    "conditioning": Slot("conditioning", ("actions", "dynamics"), ("actions", "dynamics")),
    "optimizer": Slot("optimizer", STAGES, STAGES),
}


def slot_settings(slot: str, component: str, stages: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """The dotted model-config keys a component choice sets in `stages`."""
    settings: dict[str, Any] = {f"{stage}.{SLOTS[slot].key}": component for stage in stages}
    if slot == "position":  # the older switch `rotary = true` is the rotary code: a choice of position sets it too
        settings.update({f"{stage}.rotary": component == "rotary" for stage in stages})
    return settings


MAX_NAME_LENGTH = 100  # bytes: names are shown in tables and one-line errors, and name export folders (<= 255)


@dataclass
class Profile:
    name: str
    description: str = ""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    model: dict = field(default_factory=dict)  # WorldModelConfig overrides, nested
    data: dict = field(default_factory=dict)  # procedural dataset overrides (episodes, episode_len)
    precision: str = "fp32"  # fp32 | tf32 | bf16 (the last two need --device cuda)
    base: str = ""  # another profile whose model and data this one starts from; its own keys win


@dataclass
class Dataset:
    name: str
    kind: str = "procedural"  # procedural | hdf5
    game: str = "sprite_world"
    episodes: int = 200
    episode_len: int = 32
    seed: int = 0
    repeat_prob: float = 0.75
    # false: the policy never plays noop (action 0). With noop, "stood still" and "walked into a wall" look
    # alike, and a sprite's facing after a noop shows the action before it (docs/variance.md).
    noop: bool = True
    options: dict = field(default_factory=dict)  # the game's own options (e.g. sprite_world grid, distractor)
    path: str = ""
    frame_size: int = 0  # hdf5 only: resize to this size on load (0 = keep the file's size)
    val_fraction: float = 0.1
    description: str = ""


@dataclass
class Variant:
    name: str
    description: str = ""
    components: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted model-config keys
    scale: dict[str, float] = field(default_factory=dict)  # dotted numeric keys: factor x the profile's value
    planted_fault: bool = False  # bench validate runs it against the baseline and expects FAIL
    null_change: bool = False  # bench validate runs it against the baseline on the same seeds and expects PASS
    scope: dict[str, list[str]] = field(default_factory=dict)  # slot -> the stages its component goes to (SLOTS)


@dataclass
class PluginsSection:
    """bench.toml's [plugins]: modules imported so that the components they register can be chosen."""
    modules: list[str] = field(default_factory=list)


@dataclass
class ComparisonSection:
    """bench.toml's [comparison]: what `bench report`, `gate` and `validate` compare unless told otherwise."""
    baseline: str = "meanpool_concat"
    candidates: list[str] = field(default_factory=lambda: ["windowed_attention"])
    seeds: list[int] | None = None  # None: the profile's seeds
    profile: str = "default"
    dataset: str = "sprite_world"
    alpha: float = 0.05


@dataclass
class Suite:
    path: Path | None
    profiles: dict[str, Profile]
    datasets: dict[str, Dataset]
    variants: dict[str, Variant]
    comparison: ComparisonSection
    kpis: dict[str, KpiRule]  # bench.toml's [kpis."name"] over harness/kpis.py's defaults
    plugins: list[str]

    def profile(self, name: str) -> Profile:
        return _pick(self.profiles, name, "profile")

    def dataset(self, name: str) -> Dataset:
        return _pick(self.datasets, name, "dataset")

    def variant(self, name: str) -> Variant:
        return _pick(self.variants, name, "variant")

    def model_config(self, profile: str, variant: str, frame_size: int | None = None) -> WorldModelConfig:
        """The resolved model config of one (profile, variant); a value the model cannot take names the variant."""
        values = copy.deepcopy(self.profile(profile).model)
        chosen = self.variant(variant)
        try:
            for slot, component in chosen.components.items():
                stages = chosen.scope.get(slot, SLOTS[slot].default_scope)
                for key, value in slot_settings(slot, component, stages).items():
                    set_dotted(values, key, value)
            for key, value in chosen.overrides.items():
                set_dotted(values, key, value)
            if frame_size is not None:
                values["frame_size"] = frame_size
            if chosen.scale:  # e.g. 5% of this profile's tokenizer steps; whole numbers stay whole and >= 1
                resolved = WorldModelConfig.from_dict(copy.deepcopy(values)).to_dict()
                for key, factor in chosen.scale.items():
                    base = get_dotted(resolved, key)
                    set_dotted(values, key, max(1, round(base * factor)) if isinstance(base, int) else base * factor)
            return WorldModelConfig.from_dict(values)
        except WorldbenchError as err:
            raise WorldbenchError(f"variants.{variant} on profiles.{profile}: {err}") from None

    def default_seeds(self, profile: str) -> list[int]:
        """The seeds a command uses when it is given none: the comparison's, else the profile's."""
        return self.comparison.seeds or self.profile(profile).seeds

    def planted_faults(self) -> list[str]:
        """The variants `bench validate` expects to FAIL against the baseline: built-in ones, then the user's."""
        names = [name for name, variant in self.variants.items() if variant.planted_fault]
        return sorted(names, key=lambda name: name not in BUILTIN_FAULTS)  # stable: each group keeps its order

    def null_changes(self) -> list[str]:
        """The variants `bench validate` expects to PASS against the baseline: built-in ones, then the user's."""
        names = [name for name, variant in self.variants.items() if variant.null_change]
        return sorted(names, key=lambda name: name not in BUILTIN_NULLS)


def _pick(table: dict, name: str, what: str):
    if name not in table:
        raise WorldbenchError(f"unknown {what} {name!r}; known {what}s: {', '.join(sorted(table)) or '(none)'}")
    return table[name]


def check_name(name: str, where: str) -> None:
    """A profile, dataset or variant name must be one printable line that could name a file: names are shown
    in one-line errors and report tables, and a hostile one must not reach a path."""
    if not (0 < len(name.encode(errors="replace")) <= MAX_NAME_LENGTH and name.isprintable()
            and not set(name) & set("/\\") and name not in (".", "..")):
        raise WorldbenchError(f"{where}: the name {name!r} cannot be used; use printable characters without '/' "
                              f"or '\\', 1 to {MAX_NAME_LENGTH} bytes in UTF-8 (e.g. my_variant)")


def get_dotted(values: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        values = values[part]
    return values


def set_dotted(values: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        values = values.setdefault(part, {})
    values[leaf] = value


# ----------------------------------------------------------------------------- built-in defaults

DEFAULT_PROFILES = {"default": Profile("default", "the reference hyperparameters with their default budgets")}
DEFAULT_DATASETS = {
    # no noop: after one the agent's facing still shows the action before it, a feature as strong as the
    # action itself that half the LAM's seeds encoded instead. No obstacles: a move into one showed its
    # direction by the facing alone, and LAMs grouped such moves of different directions arbitrarily
    # (docs/variance.md)
    "sprite_world": Dataset("sprite_world", repeat_prob=0.5, noop=False,
                            options={"walls": 0, "spinner_blocks": False},
                            description="agent moved by up/down/left/right and facing that way on an open "
                            "torus, a distractor moving on its own"),
    # actions drawn afresh each step: with sticky ones a latent code need only say "moved" and leave
    # the direction to the past frames (docs/controllability.md)
    "pong": Dataset("pong", game="pong", repeat_prob=0.0,
                    description="a paddle moved by noop/up/down and wrapping round, a ball with momentum"),
}
DEFAULT_VARIANTS = {
    "meanpool_concat": Variant("meanpool_concat", "LAM encoder: mean over patches, concat(t, t+1) (baseline)",
                               {"lam_encoder": "meanpool_concat"}),
    "windowed_attention": Variant("windowed_attention", "LAM encoder: length-2 windowed attention, then mean",
                                  {"lam_encoder": "windowed_attention"}),
    "query_pool": Variant("query_pool", "LAM encoder: learned-query attention pooling over frame changes",
                          {"lam_encoder": "query_pool"}),
}
# Planted faults for `bench validate`, each the baseline with one thing broken on purpose (on_baseline).
# `scale` takes a share of the profile's budget, so a fault is as undertrained on `smoke` as on `ci`.
BUILTIN_FAULTS = {
    "fault_tokenizer_undertrained": Variant(
        "fault_tokenizer_undertrained", "planted fault: 5% of the profile's tokenizer steps",
        scale={"tokenizer.steps": 0.05}, planted_fault=True),
    "fault_lam_blind": Variant(
        "fault_lam_blind", "planted fault: a LAM encoder that ignores the frames (one learned constant action)",
        {"lam_encoder": "blind"}, planted_fault=True),
    "fault_dynamics_blind": Variant(
        "fault_dynamics_blind", "planted fault: dynamics that zeroes the actions before conditioning",
        {"action_input": "blind"}, planted_fault=True),
    "fault_dynamics_undertrained": Variant(
        "fault_dynamics_undertrained", "planted fault: 10% of the profile's dynamics steps",
        scale={"dynamics.steps": 0.1}, planted_fault=True),
}


# Null changes for `bench validate`: the baseline as a harmless refactor leaves it, which the gate must PASS.
# A relative 1e-6 perturbation of every stage's initial weights changes nothing but float rounding, as a
# reordered sum, another kernel or another CPU does; training then amplifies it as it amplifies those.
INIT_ROUNDING = 1e-6
BUILTIN_NULLS = {
    "null_rounding": Variant(
        "null_rounding", f"null change: every stage's initial weights times (1 + {INIT_ROUNDING:g} N(0, 1)), "
        "float rounding only", overrides={f"{stage}.init_noise": INIT_ROUNDING for stage in STAGES},
        null_change=True),
}


def on_baseline(baseline: Variant, builtin: Variant) -> Variant:
    """A built-in planted fault or null change applied to the comparison's baseline: its choices, the built-in's on
    top."""
    return Variant(builtin.name, f"{builtin.description} (on {baseline.name})",
                   {**baseline.components, **builtin.components}, {**baseline.overrides, **builtin.overrides},
                   {**baseline.scale, **builtin.scale}, planted_fault=builtin.planted_fault,
                   null_change=builtin.null_change, scope={**baseline.scope, **builtin.scope})
