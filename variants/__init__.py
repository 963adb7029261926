"""The built-in variants' components, and the registry API that plugins use.

Importing this package registers every built-in component (the modules register on import), so
`from variants import components` sees them all. The registry itself is worldmodel/registry.py: the
LAM looks its encoder up there. A plugin registers its own with `from variants import register`.
"""
import variants.lam_encoders  # noqa: F401  (registers windowed_attention, query_pool)
import variants.planted_faults  # noqa: F401  (registers the blind lam_encoder and action_input)
from worldmodel.registry import components, describe, lookup, register

__all__ = ["components", "describe", "lookup", "register"]
