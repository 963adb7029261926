"""The component registry: `@register(slot, name)` makes a component choosable from bench.toml.

A slot is a swappable part of the model (`lam_encoder` today; `ffn`, `norm`, `mask_schedule`,
`optimizer` can join). Components are looked up by name; unknown names fail with the list.
"""
from __future__ import annotations

from typing import Callable

from worldmodel.errors import WorldbenchError

_REGISTRY: dict[str, dict[str, Callable]] = {}


def register(slot: str, name: str) -> Callable:
    def add(component: Callable) -> Callable:
        components = _REGISTRY.setdefault(slot, {})
        if name in components and components[name] is not component:
            raise WorldbenchError(f"component '{name}' is registered twice in slot '{slot}'; rename one")
        components[name] = component
        return component
    return add


def lookup(slot: str, name: str) -> Callable:
    _load_builtin_components()
    if slot not in _REGISTRY:
        raise WorldbenchError(f"unknown component slot '{slot}'; known slots: {', '.join(sorted(_REGISTRY))}")
    components = _REGISTRY[slot]
    if name not in components:
        raise WorldbenchError(
            f"unknown {slot} '{name}'; known: {', '.join(sorted(components))}"
        )
    return components[name]


def components() -> dict[str, list[str]]:
    """slot -> sorted component names."""
    _load_builtin_components()
    return {slot: sorted(names) for slot, names in sorted(_REGISTRY.items())}


def describe(slot: str, name: str) -> str:
    doc = (lookup(slot, name).__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def _load_builtin_components() -> None:
    # Imported lazily so the registry module itself has no model dependencies.
    import variants.lam_encoders  # noqa: F401
    import variants.planted_faults  # noqa: F401
