"""bench.toml: profiles, datasets, variants, the comparison and the KPI rules, loaded and validated.

Every value has a default, so an empty file is a valid suite. Every error is one line that
names the key path and what is allowed there.
"""
from __future__ import annotations

import copy
import dataclasses
import tomllib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from harness.kpis import KPIS
from harness.types import OVERRIDABLE, KpiRule, RuleError
from variants import components as registered_components  # importing variants registers the built-in ones
from worldmodel.config import WorldModelConfig
from worldmodel.data import GAMES
from worldmodel.data.games import check_game_options
from worldmodel.errors import WorldbenchError
from worldmodel.train import PRECISIONS

# Which model-config key a component slot sets.
SLOT_CONFIG_KEYS = {"lam_encoder": "actions.encoder"}
DEFAULT_CONFIG_FILE = "bench.toml"


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


@dataclass
class Comparison:
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
    comparison: Comparison
    kpis: dict[str, KpiRule]  # bench.toml's [kpis."name"] over harness/kpis.py's defaults
    plugins: list[str]

    def profile(self, name: str) -> Profile:
        return _pick(self.profiles, name, "profile")

    def dataset(self, name: str) -> Dataset:
        return _pick(self.datasets, name, "dataset")

    def variant(self, name: str) -> Variant:
        return _pick(self.variants, name, "variant")

    def model_config(self, profile: str, variant: str, frame_size: int | None = None) -> WorldModelConfig:
        """The resolved model config of one (profile, variant)."""
        values = copy.deepcopy(self.profile(profile).model)
        chosen = self.variant(variant)
        for slot, component in chosen.components.items():
            _set_dotted(values, SLOT_CONFIG_KEYS[slot], component)
        for key, value in chosen.overrides.items():
            _set_dotted(values, key, value)
        if frame_size is not None:
            values["frame_size"] = frame_size
        if chosen.scale:  # e.g. 5% of this profile's tokenizer steps; whole numbers stay whole and >= 1
            resolved = WorldModelConfig.from_dict(copy.deepcopy(values)).to_dict()
            for key, factor in chosen.scale.items():
                base = _get_dotted(resolved, key)
                _set_dotted(values, key, max(1, round(base * factor)) if isinstance(base, int) else base * factor)
        return WorldModelConfig.from_dict(values)

    def default_seeds(self, profile: str) -> list[int]:
        """The seeds a command uses when it is given none: the comparison's, else the profile's."""
        return self.comparison.seeds or self.profile(profile).seeds

    def planted_faults(self) -> list[str]:
        """The variants `bench validate` expects to FAIL against the baseline: built-in ones, then the user's."""
        names = [name for name, variant in self.variants.items() if variant.planted_fault]
        return sorted(names, key=lambda name: name not in BUILTIN_FAULTS)  # stable: each group keeps its order


def _pick(table: dict, name: str, what: str):
    if name not in table:
        raise WorldbenchError(f"unknown {what} '{name}'; known {what}s: {', '.join(sorted(table)) or '(none)'}")
    return table[name]


def _get_dotted(values: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        values = values[part]
    return values


def _set_dotted(values: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        values = values.setdefault(part, {})
    values[leaf] = value


# ----------------------------------------------------------------------------- parsing

MAX_SEEDS = 10_000  # a comparison trains a run per seed: more is a typo, not a plan
MAX_SEED = 2**32 - 1  # numpy and torch seeds must fit


def seeds_option(text: str | None, default: list[int] | None, where: str = "--seeds") -> list[int] | None:
    """A --seeds style option: its seeds, or `default` when it was not given ("" is given: an error, not a default)."""
    return default if text is None else parse_seeds(text, where)


def parse_seeds(text: str | list, where: str = "--seeds") -> list[int]:
    """'0-4' -> [0..4], '0,3' -> [0, 3], [1, 2] -> [1, 2]."""
    if isinstance(text, list):
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in text) or not text:
            raise WorldbenchError(f"{where}: expected a non-empty list of seeds >= 0, got {text!r}")
        return list(dict.fromkeys(text))
    seeds: list[int] = []
    if not str(text).strip():
        raise WorldbenchError(f"{where}: empty seed list; use a range like 0-4 or a list like 0,3")
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                if low > high or low < 0:
                    raise ValueError
                if high - low + 1 > MAX_SEEDS or high > MAX_SEED:
                    raise WorldbenchError(
                        f"{where}: '{text}' asks for {high - low + 1:,} seeds up to {high}; "
                        f"at most {MAX_SEEDS:,} seeds, each <= {MAX_SEED}")
                seeds.extend(range(low, high + 1))
            else:
                if int(part) < 0:
                    raise ValueError
                seeds.append(int(part))
        except ValueError:
            raise WorldbenchError(
                f"{where}: '{text}' is not a seed list; use a range like 0-4 (low <= high) or a list like 0,3"
            ) from None
        if len(seeds) > MAX_SEEDS or (seeds and max(seeds) > MAX_SEED):
            raise WorldbenchError(
                f"{where}: '{text}' asks for {len(seeds):,} seeds up to {max(seeds)}; "
                f"at most {MAX_SEEDS:,} seeds, each <= {MAX_SEED}")
    return list(dict.fromkeys(seeds))


TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
              dict: "a table"}


def _check_type(value: Any, expected: type, where: str) -> Any:
    ok = isinstance(value, expected) and not (expected in (int, float) and isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise WorldbenchError(f"{where}: expected {TYPE_NAMES[expected]}, got {value!r}")
    return value


def _fill(cls, values: dict, where: str, **fixed):
    """Build dataclass `cls` from a TOML table, checking keys and types."""
    return cls(**_checked_fields(cls, values, where, **fixed))


def _checked_fields(cls, values: dict, where: str, **fixed) -> dict:
    """The keyword arguments of dataclass `cls` from a TOML table: known keys, values of the declared types."""
    if not isinstance(values, dict):
        raise WorldbenchError(f"{where}: expected a table, got {values!r}")
    hints = get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.name not in fixed}
    kwargs = dict(fixed)
    for key, value in values.items():
        if key not in fields:
            raise WorldbenchError(f"{where}.{key}: unknown key; allowed: {', '.join(sorted(fields))}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    return kwargs


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """`value` as the field's declared type: list[int] is a seed list, `float | str` keeps a string as given."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):  # list[int] | None, float | str
        options = [arg for arg in args if arg is not type(None)]
        if str in options and isinstance(value, str):
            return value
        return _coerce(value, options[0], where)
    if annotation == list[int]:
        return parse_seeds(value, where)
    if list in (origin, annotation):
        return _check_type(value, list, where)
    if dict in (origin, annotation):
        return _check_type(value, dict, where)
    return _check_type(value, annotation, where)


def _check_model_overrides(values: dict, where: str) -> None:
    """Model overrides must name real WorldModelConfig keys with the right types."""
    defaults = WorldModelConfig().to_dict()

    def walk(overrides: dict, reference: dict, path: str) -> None:
        for key, value in overrides.items():
            if key not in reference:
                raise WorldbenchError(f"{path}.{key}: unknown model key; allowed: {', '.join(sorted(reference))}")
            if isinstance(reference[key], dict):
                walk(_check_type(value, dict, f"{path}.{key}"), reference[key], f"{path}.{key}")
            else:
                overrides[key] = _check_type(value, type(reference[key]), f"{path}.{key}")

    walk(values, defaults, where)
    # A raw override of a component's config key (actions.encoder = "...") must name a registered component,
    # like `components` does: otherwise it would fail only when the run builds the model.
    slots = registered_components()
    for slot, dotted in SLOT_CONFIG_KEYS.items():
        section, _, key = dotted.rpartition(".")
        chosen = values.get(section, {}).get(key) if isinstance(values.get(section), dict) else None
        if chosen is not None:
            _check_choice(chosen, slots.get(slot, []), f"{where}.{dotted}")


def _dotted_to_nested(flat: dict, where: str) -> dict:
    nested: dict = {}
    for key, value in flat.items():
        _set_dotted(nested, key, value)
    _check_model_overrides(nested, where)
    return nested


def _check_choice(value: str, allowed, where: str) -> None:
    if value not in allowed:
        raise WorldbenchError(f"{where}: '{value}' is not allowed; use one of: {', '.join(sorted(allowed))}")


def load_suite(path: str | Path | None = DEFAULT_CONFIG_FILE) -> Suite:
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise WorldbenchError(f"config file '{path}' does not exist; pass --config FILE or create bench.toml")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise WorldbenchError(f"config file '{path}' is not valid TOML ({err}); fix the syntax") from None
        except (OSError, UnicodeDecodeError) as err:
            raise WorldbenchError(f"config file '{path}' cannot be read ({err}); check the file") from None
    return build_suite(raw, path)


SECTIONS = ("profiles", "datasets", "variants", "comparison", "kpis", "plugins")


def build_suite(raw: dict, path: Path | None = None) -> Suite:
    """A Suite from a parsed bench.toml: each section over its defaults, checked, then cross-checked."""
    for key in raw:
        if key not in SECTIONS:
            raise WorldbenchError(f"{key}: unknown section; allowed: {', '.join(sorted(SECTIONS))}")
    plugins = raw.get("plugins", {})
    plugin_modules = _check_type(_check_type(plugins, dict, "plugins").get("modules", []), list, "plugins.modules")
    _load_plugins(plugin_modules)  # first: a plugin's components are choosable in the sections below
    profiles = _with_bases({**DEFAULT_PROFILES, **_section(raw, "profiles", _parse_profile)})
    datasets = {**DEFAULT_DATASETS, **_section(raw, "datasets", _parse_dataset)}
    slots = registered_components()
    variants = {**DEFAULT_VARIANTS, **_section(raw, "variants", lambda name, values: _parse_variant(name, values, slots))}
    comparison = _fill(Comparison, _check_type(raw.get("comparison", {}), dict, "comparison"), "comparison")
    kpis = dict(KPIS)
    for name, values in _check_type(raw.get("kpis", {}), dict, "kpis").items():
        _check_choice(name, KPIS, "kpis")
        kpis[name] = _parse_kpi_rule(kpis[name], values)
    return _cross_checked(Suite(path, profiles, datasets, variants, comparison, kpis, plugin_modules))


def _section(raw: dict, section: str, parse) -> dict:
    """name -> parse(name, values) for each table of a section, in file order."""
    return {name: parse(name, values) for name, values in _check_type(raw.get(section, {}), dict, section).items()}


def _parse_profile(name: str, values: dict) -> Profile:
    profile = _fill(Profile, values, f"profiles.{name}", name=name)
    _check_model_overrides(profile.model, f"profiles.{name}.model")
    for key in profile.data:
        _check_choice(key, {"episodes", "episode_len"}, f"profiles.{name}.data.{key}")
    _check_choice(profile.precision, PRECISIONS, f"profiles.{name}.precision")
    _check_model_config(profile.model, f"profiles.{name}.model")
    return profile


def _check_model_config(model: dict, where: str) -> None:
    """Model overrides must build a valid WorldModelConfig (ranges, choices): one line naming `where`."""
    try:
        WorldModelConfig.from_dict(copy.deepcopy(model))
    except WorldbenchError as err:
        raise WorldbenchError(f"{where}: {err}") from None


def _with_bases(profiles: dict[str, Profile]) -> dict[str, Profile]:
    """Each profile with a `base` gets its base's model and data under its own (bases resolved first)."""
    resolved: dict[str, Profile] = {}

    def resolve(name: str, chain: tuple[str, ...]) -> Profile:
        if name in resolved:
            return resolved[name]
        profile = profiles[name]
        if profile.base:
            if profile.base not in profiles:
                raise WorldbenchError(f"profiles.{name}.base: no profile '{profile.base}'; "
                                      f"known: {', '.join(sorted(profiles))}")
            if profile.base in chain:
                raise WorldbenchError(f"profiles.{name}.base: '{profile.base}' makes a cycle "
                                      f"({' -> '.join(chain + (profile.base,))}); break it")
            base = resolve(profile.base, chain + (profile.base,))
            profile = dataclasses.replace(profile, model=_nested_merge(base.model, profile.model),
                                          data={**base.data, **profile.data})
            _check_model_config(profile.model, f"profiles.{name}.model (over base '{profile.base}')")
        resolved[name] = profile
        return profile

    return {name: resolve(name, (name,)) for name in profiles}


def _nested_merge(under: dict, over: dict) -> dict:
    """`over` on top of `under`, table by table (a copy; neither is changed)."""
    merged = copy.deepcopy(under)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _nested_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _parse_dataset(name: str, values: dict) -> Dataset:
    dataset = _fill(Dataset, values, f"datasets.{name}", name=name)
    _check_choice(dataset.kind, {"procedural", "hdf5"}, f"datasets.{name}.kind")
    if dataset.kind == "procedural":
        _check_choice(dataset.game, GAMES, f"datasets.{name}.game")
        try:
            check_game_options(dataset.game, dataset.options)
        except WorldbenchError as err:
            raise WorldbenchError(f"datasets.{name}.options: {err}") from None
    elif not dataset.path:
        raise WorldbenchError(f"datasets.{name}.path: an hdf5 dataset needs a path to its .h5 file")
    return dataset


def _parse_variant(name: str, values: dict, slots: dict[str, list[str]]) -> Variant:
    variant = _fill(Variant, values, f"variants.{name}", name=name)
    for slot, component in variant.components.items():
        _check_choice(slot, SLOT_CONFIG_KEYS, f"variants.{name}.components.{slot}")
        _check_choice(_check_type(component, str, f"variants.{name}.components.{slot}"), slots.get(slot, []),
                      f"variants.{name}.components.{slot}")
    nested = _dotted_to_nested(variant.overrides, f"variants.{name}.overrides")
    variant.overrides = {key: value for key, value in _flatten(nested).items()}
    variant.scale = _check_scale(variant.scale, f"variants.{name}.scale")
    return variant


def _parse_kpi_rule(default: KpiRule, values: dict) -> KpiRule:
    """bench.toml's [kpis."name"] table: a copy of the KPI's default with the table's OVERRIDABLE fields replaced.

    Keys and TOML types are checked here; what a rule's values may be, once, by KpiRule itself.
    """
    where = f"kpis.{default.name}"
    fixed = {f.name: getattr(default, f.name) for f in dataclasses.fields(KpiRule) if f.name not in OVERRIDABLE}
    try:
        return dataclasses.replace(default, **_checked_fields(KpiRule, values, where, **fixed))
    except RuleError as err:
        raise WorldbenchError(f"{where}.{err.field}: {err.problem}") from None


def _cross_checked(suite: Suite) -> Suite:
    """The comparison must name things that exist; the built-in planted faults join on its baseline."""
    comparison = suite.comparison
    if not comparison.candidates:
        raise WorldbenchError("comparison.candidates: empty; name at least one variant to compare with the baseline")
    if not 0 < comparison.alpha < 0.5:
        raise WorldbenchError(f"comparison.alpha: {comparison.alpha} is not in (0, 0.5); the usual choice is 0.05")
    suite.variant(comparison.baseline)
    for candidate in comparison.candidates:
        suite.variant(candidate)
    suite.profile(comparison.profile)
    suite.dataset(comparison.dataset)
    for name, fault in BUILTIN_FAULTS.items():
        if name not in suite.variants:  # a variant of the same name in bench.toml replaces the built-in fault
            suite.variants[name] = _on_baseline(suite.variant(comparison.baseline), fault)
    return suite


def _check_scale(scale: dict, where: str) -> dict[str, float]:
    """Scale factors must name numeric model keys and be positive numbers."""
    defaults = _flatten(WorldModelConfig().to_dict())
    checked = {}
    for key, factor in scale.items():
        if key not in defaults or isinstance(defaults[key], (bool, str)):
            numeric = sorted(k for k, v in defaults.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
            raise WorldbenchError(f"{where}.{key}: not a numeric model key; allowed: {', '.join(numeric)}")
        checked[key] = _check_type(factor, float, f"{where}.{key}")
        if not checked[key] > 0:
            raise WorldbenchError(f"{where}.{key}: the factor must be > 0, got {factor!r}")
    return checked


def _on_baseline(baseline: Variant, fault: Variant) -> Variant:
    """A built-in planted fault applied to the comparison's baseline: its choices, with the fault's on top."""
    return Variant(fault.name, f"{fault.description} (on {baseline.name})",
                   {**baseline.components, **fault.components}, {**baseline.overrides, **fault.overrides},
                   {**baseline.scale, **fault.scale}, planted_fault=True)


def _flatten(nested: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _load_plugins(modules: list) -> None:
    """Import user modules that register their own components (`@register(slot, name)`).

    A module that is not found, does not parse or raises while importing is a usage error naming
    the plugin's file and line, never a traceback.
    """
    import importlib

    for module in modules:
        name = _check_type(module, str, "plugins.modules")
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is None or not (name == err.name or name.startswith(f"{err.name}.")):
                raise WorldbenchError(_plugin_failure(name, err)) from None
            raise WorldbenchError(f"plugins.modules: cannot import '{name}' ({err}); check the module path") from None
        except Exception as err:  # noqa: BLE001 - user code: SyntaxError, or anything raised at import time
            raise WorldbenchError(_plugin_failure(name, err)) from None


def _plugin_failure(name: str, err: BaseException) -> str:
    """One line: the plugin, where in its source it failed (file:line) and the error's first line."""
    import importlib.util
    import traceback

    try:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec and spec.origin else ""
    except (ImportError, ValueError):
        origin = ""
    if isinstance(err, SyntaxError) and err.filename:
        where = f"{err.filename}:{err.lineno}"
        message = err.msg
    else:
        frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == origin]
        where = f"{origin}:{frames[-1].lineno}" if frames else origin or name
        message = (str(err).strip().splitlines() or [""])[0][:200]
    return (f"plugins.modules: plugin '{name}' ({where}) failed to import: {type(err).__name__}: {message}; "
            f"fix the plugin or remove it from [plugins]")


# ----------------------------------------------------------------------------- built-in defaults

DEFAULT_PROFILES = {"default": Profile("default", "the reference hyperparameters with their default budgets")}
DEFAULT_DATASETS = {
    "sprite_world": Dataset("sprite_world", repeat_prob=0.5,
                            description="agent moved by noop/up/down/left/right and facing that way, walls, "
                            "a distractor moving on its own"),
    # actions drawn afresh each step: with sticky ones a latent code need only say "moved" and leave
    # the direction to the past frames (README "Controllability")
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
# Planted faults for `bench validate`, each the baseline with one thing broken on purpose (_on_baseline).
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
        overrides={"dynamics.action_blind": True}, planted_fault=True),
    "fault_dynamics_undertrained": Variant(
        "fault_dynamics_undertrained", "planted fault: 10% of the profile's dynamics steps",
        scale={"dynamics.steps": 0.1}, planted_fault=True),
}
