"""Reading bench.toml into a harness.schema.Suite: every key, type and range checked as it is read.

Every error is one line that names the key path and what is allowed there.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import tomllib
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from harness.kpis import COMPARE_TIME_KPIS, KPIS
from harness.plugins import load_plugins
from harness.schema import (BUILTIN_FAULTS, BUILTIN_NULLS, DEFAULT_DATASETS, DEFAULT_PROFILES, DEFAULT_VARIANTS, SLOTS,
                            ComparisonSection, Dataset, PluginsSection, Profile, Suite, Variant, check_name, on_baseline,
                            set_dotted)
from harness.seeds import parse_seeds
from harness.types import OVERRIDABLE, KpiRule, RuleError
from variants import components as registered_components  # importing variants registers the built-in ones
from worldmodel.config import WorldModelConfig
from worldmodel.data import GAMES
from worldmodel.data.games import check_game_options
from worldmodel.errors import WorldbenchError
from worldmodel.train import PRECISIONS

DEFAULT_CONFIG_FILE = "bench.toml"
# The project's default suite, shipped inside the package (a link to the repository's bench.toml in a checkout),
# read when no bench.toml is found from the working directory upwards.
PACKAGED_CONFIG = Path(__file__).with_name(DEFAULT_CONFIG_FILE)
MAX_SCALE = 1000.0  # a variant's scale factor: beyond a thousandfold budget is a typo, not a plan
SECTIONS = ("profiles", "datasets", "variants", "comparison", "kpis", "plugins")
TARGET_FIELDS = ("target", "target_epsilon")  # a steps_to_target KPI's own keys


def find_config(start: Path | None = None) -> Path:
    """The suite file a command reads when --config is not given: the first bench.toml in `start` (default: the
    working directory) or a folder above it, else the packaged default."""
    here = Path.cwd() if start is None else Path(start)
    for folder in (here, *here.absolute().parents):
        candidate = folder / DEFAULT_CONFIG_FILE
        if candidate.is_file():
            return candidate
    return PACKAGED_CONFIG


def load_suite(path: str | Path | None = DEFAULT_CONFIG_FILE, overrides: list[str] = ()) -> Suite:
    """The suite in `path` (None: no file, the built-in defaults) with `overrides` ("key=value", --set) on top."""
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
    for override in overrides:
        raw = _nested_merge(raw, parse_override(override))
    return build_suite(raw, path)


def parse_override(text: str) -> dict:
    """`--set KEY=VALUE` as the nested table bench.toml would hold: KEY is a dotted TOML key (quote a part that has
    dots: kpis."rollout.ar_mse".margin), VALUE a TOML value, or else taken as a string (as OmegaConf's dot-lists).
    What the value may be is checked afterwards by build_suite, as for the file."""
    key, equals, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not equals or not key:
        raise WorldbenchError(f"--set {text!r}: expected KEY=VALUE, e.g. --set comparison.alpha=0.1")
    for literal in (value, json.dumps(value)):  # a TOML value, else the text as a string
        try:
            return tomllib.loads(f"{key} = {literal}")
        except tomllib.TOMLDecodeError:
            continue
    raise WorldbenchError(f"--set {text!r}: '{key}' is not a dotted key; e.g. profiles.ci.seeds=[0,1] or "
                          f"kpis.\"rollout.ar_mse\".margin=0.2")


def build_suite(raw: dict, path: Path | None = None) -> Suite:
    """A Suite from a parsed bench.toml: each section over its defaults, checked, then cross-checked."""
    for key in raw:
        if key not in SECTIONS:
            raise WorldbenchError(f"{key}: unknown section; allowed: {', '.join(sorted(SECTIONS))}")
    plugins = _fill(PluginsSection, _check_type(raw.get("plugins", {}), dict, "plugins"), "plugins")
    plugin_modules = [_check_type(module, str, "plugins.modules") for module in plugins.modules]
    load_plugins(plugin_modules)  # first: a plugin's components are choosable in the sections below
    profiles = _with_bases({**DEFAULT_PROFILES, **_section(raw, "profiles", _parse_profile)})
    datasets = {**DEFAULT_DATASETS, **_section(raw, "datasets", _parse_dataset)}
    slots = registered_components()
    variants = {**DEFAULT_VARIANTS, **_section(raw, "variants", lambda name, values: _parse_variant(name, values, slots))}
    comparison = _fill(ComparisonSection, _check_type(raw.get("comparison", {}), dict, "comparison"), "comparison")
    kpis = dict(KPIS)
    for name, values in _check_type(raw.get("kpis", {}), dict, "kpis").items():
        _check_choice(name, KPIS, "kpis")
        kpis[name] = _parse_kpi_rule(kpis[name], values)
    return _cross_checked(Suite(path, profiles, datasets, variants, comparison, kpis, plugin_modules))


def _section(raw: dict, section: str, parse) -> dict:
    """name -> parse(name, values) for each table of a section, in file order; each name checked first."""
    tables = _check_type(raw.get(section, {}), dict, section)
    for name in tables:
        check_name(name, section)
    return {name: parse(name, values) for name, values in tables.items()}


# ----------------------------------------------------------------------------- TOML values

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


def _check_choice(value: str, allowed, where: str) -> None:
    if value not in allowed:
        raise WorldbenchError(f"{where}: {value!r} is not allowed; use one of: {', '.join(sorted(allowed))}")


def _flatten(nested: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# ----------------------------------------------------------------------------- model overrides

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
    for slot, spec in SLOTS.items():
        for section in spec.stages:
            chosen = values.get(section, {}).get(spec.key) if isinstance(values.get(section), dict) else None
            if chosen is not None:
                _check_choice(chosen, slots.get(slot, []), f"{where}.{section}.{spec.key}")


def _check_model_config(model: dict, where: str) -> None:
    """Model overrides must build a valid WorldModelConfig (ranges, choices): one line naming `where`."""
    try:
        WorldModelConfig.from_dict(copy.deepcopy(model))
    except WorldbenchError as err:
        raise WorldbenchError(f"{where}: {err}") from None


def _check_scale(scale: dict, where: str) -> dict[str, float]:
    """Scale factors must name numeric model keys and be numbers in (0, MAX_SCALE]."""
    defaults = _flatten(WorldModelConfig().to_dict())
    checked = {}
    for key, factor in scale.items():
        if key not in defaults or isinstance(defaults[key], (bool, str)):
            numeric = sorted(k for k, v in defaults.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
            raise WorldbenchError(f"{where}.{key}: not a numeric model key; allowed: {', '.join(numeric)}")
        checked[key] = _check_type(factor, float, f"{where}.{key}")
        if not 0 < checked[key] <= MAX_SCALE:
            raise WorldbenchError(f"{where}.{key}: the factor must be > 0 and <= {MAX_SCALE:g}, got {factor!r}")
    return checked


# ----------------------------------------------------------------------------- sections

def _parse_profile(name: str, values: dict) -> Profile:
    profile = _fill(Profile, values, f"profiles.{name}", name=name)
    _check_model_overrides(profile.model, f"profiles.{name}.model")
    for key, value in profile.data.items():
        where = f"profiles.{name}.data.{key}"
        _check_choice(key, {"episodes", "episode_len"}, where)
        if _check_type(value, int, where) < 1:
            raise WorldbenchError(f"{where}: must be >= 1, got {value}")
    _check_choice(profile.precision, PRECISIONS, f"profiles.{name}.precision")
    _check_model_config(profile.model, f"profiles.{name}.model")
    return profile


def _with_bases(profiles: dict[str, Profile]) -> dict[str, Profile]:
    """Each profile with a `base` gets its base's model and data under its own (bases resolved first)."""
    resolved: dict[str, Profile] = {}

    def resolve(name: str, chain: tuple[str, ...]) -> Profile:
        if name in resolved:
            return resolved[name]
        profile = profiles[name]
        if profile.base:
            if profile.base not in profiles:
                raise WorldbenchError(f"profiles.{name}.base: no profile {profile.base!r}; "
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
    """A dataset's keys and types; its ranges, and whether its episodes fit the windows, are checked against
    each profile before anything runs (harness.driver.preflight)."""
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
        _check_choice(slot, SLOTS, f"variants.{name}.components.{slot}")
        _check_choice(_check_type(component, str, f"variants.{name}.components.{slot}"), slots.get(slot, []),
                      f"variants.{name}.components.{slot}")
    for slot, stages in variant.scope.items():
        where = f"variants.{name}.scope.{slot}"
        _check_choice(slot, SLOTS, where)
        if slot not in variant.components:
            raise WorldbenchError(f"{where}: the variant chooses no {slot} component; add one to components "
                                  f"or drop the scope")
        if not _check_type(stages, list, where):
            raise WorldbenchError(f"{where}: empty; name the stages, e.g. [\"dynamics\"]")
        for stage in stages:
            _check_choice(_check_type(stage, str, where), SLOTS[slot].stages, where)
    nested: dict = {}
    for key, value in variant.overrides.items():
        set_dotted(nested, key, value)
    _check_model_overrides(nested, f"variants.{name}.overrides")
    variant.overrides = _flatten(nested)
    variant.scale = _check_scale(variant.scale, f"variants.{name}.scale")
    if variant.planted_fault and variant.null_change:
        raise WorldbenchError(f"variants.{name}: planted_fault and null_change are both true; a variant must FAIL "
                              f"(a planted fault) or PASS (a null change), so set one of them")
    return variant


def _parse_kpi_rule(default: KpiRule, values: dict) -> KpiRule:
    """bench.toml's [kpis."name"] table: a copy of the KPI's default with the table's OVERRIDABLE fields replaced.

    Keys and TOML types are checked here; what a rule's values may be, once, by KpiRule itself.
    """
    where = f"kpis.{default.name}"
    fixed = {f.name: getattr(default, f.name) for f in dataclasses.fields(KpiRule) if f.name not in OVERRIDABLE}
    if default.name not in COMPARE_TIME_KPIS:  # a target would be read by nothing
        fixed.update({key: getattr(default, key) for key in TARGET_FIELDS})
    try:
        return dataclasses.replace(default, **_checked_fields(KpiRule, values, where, **fixed))
    except RuleError as err:
        raise WorldbenchError(f"{where}.{err.field}: {err.problem}") from None


def _cross_checked(suite: Suite) -> Suite:
    """The comparison must name things that exist; the built-in planted faults join on its baseline."""
    comparison = suite.comparison
    if not comparison.candidates:
        raise WorldbenchError("comparison.candidates: empty; name at least one variant to compare with the baseline")
    twice = sorted({name for name in comparison.candidates if comparison.candidates.count(name) > 1})
    if twice:
        raise WorldbenchError(f"comparison.candidates: {', '.join(twice)} named more than once; name each once")
    if comparison.baseline in comparison.candidates:
        raise WorldbenchError(f"comparison.candidates: {comparison.baseline!r} is the baseline, and a variant "
                              f"against itself on the same seeds compares nothing; name another variant")
    if not 0 < comparison.alpha < 0.5:
        raise WorldbenchError(f"comparison.alpha: {comparison.alpha} is not in (0, 0.5); the usual choice is 0.05")
    suite.variant(comparison.baseline)
    for candidate in comparison.candidates:
        suite.variant(candidate)
    suite.profile(comparison.profile)
    suite.dataset(comparison.dataset)
    for name, builtin in {**BUILTIN_FAULTS, **BUILTIN_NULLS}.items():
        if name not in suite.variants:  # a variant of the same name in bench.toml replaces the built-in one
            suite.variants[name] = on_baseline(suite.variant(comparison.baseline), builtin)
    return suite
