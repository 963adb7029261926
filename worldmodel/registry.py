"""The component registry: `@register(slot, name)` makes a component choosable from bench.toml.

A slot is a swappable part of the model; each is filled by name from the stage config, and unknown names
fail with the list. The slots, what a component of each is called with, and where the anchor's lives:

  lam_encoder       (config) -> frames -> latent actions        worldmodel/lam.py        meanpool_concat
  action_input      (config) -> actions -> actions              worldmodel/dynamics.py   latent_actions
  action_injection  (config) -> how actions enter the dynamics  worldmodel/dynamics.py   norm_conditioning
  maskgit_schedule  (config) -> counts and choice per round     worldmodel/dynamics.py   exponential
  ffn               (dim, hidden, BlockChoices) -> feed-forward worldmodel/layers.py     swiglu
  position          (grid, head_dim, heads) -> spatial code     worldmodel/layers.py     absolute (and rotary)
  conditioning      (dim, cond_dim) -> conditioned norm         worldmodel/norms.py      film
  optimizer         (model, StageConfig) -> optimizer           worldmodel/train.py      adamw

It lives at the bottom of the stack because the model looks its components up here. A component is
known once the module that registers it has been imported: the anchor's with the modules above, the
other built-in ones with the `variants` package, a user's with its plugin.
"""
from __future__ import annotations

from typing import Callable

from worldmodel.errors import WorldbenchError

_REGISTRY: dict[str, dict[str, Callable]] = {}


def register(slot: str, name: str) -> Callable:
    """Decorator: file the component (a class or factory taking the WorldModelConfig) under slot/name."""
    def add(component: Callable) -> Callable:
        components = _REGISTRY.setdefault(slot, {})
        if name in components and components[name] is not component:
            raise WorldbenchError(f"component '{name}' is registered twice in slot '{slot}'; rename one")
        components[name] = component
        return component
    return add


def lookup(slot: str, name: str) -> Callable:
    if slot not in _REGISTRY:
        raise WorldbenchError(f"unknown component slot '{slot}'; known slots: {', '.join(sorted(_REGISTRY))}")
    components = _REGISTRY[slot]
    if name not in components:
        raise WorldbenchError(f"unknown {slot} '{name}'; known: {', '.join(sorted(components))} (a component is "
                              f"known once its module is imported: `import variants` for the built-in ones)")
    return components[name]


def components() -> dict[str, list[str]]:
    """slot -> sorted component names."""
    return {slot: sorted(names) for slot, names in sorted(_REGISTRY.items())}


def describe(slot: str, name: str) -> str:
    """The first line of the component's docstring."""
    doc = (lookup(slot, name).__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""
