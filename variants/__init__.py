"""The built-in variants' components, and the registry API that plugins use.

Importing this package registers every built-in component (the modules register on import), so
`from variants import components` sees them all, the anchor's included (worldmodel.stages imports every
model module and the trainer, where those are registered). The registry itself is worldmodel/registry.py:
the model looks its components up there. A plugin registers its own with `from variants import register`.
"""
import variants.action_token  # noqa: F401  (registers the prepend_token action_injection)
import variants.adaln_zero  # noqa: F401  (registers the adaln_zero conditioning)
import variants.alibi  # noqa: F401  (registers the alibi position code)
import variants.lam_encoders  # noqa: F401  (registers windowed_attention, query_pool)
import variants.maskgit_schedules  # noqa: F401  (registers the cosine and halton maskgit_schedule)
import variants.moe  # noqa: F401  (registers the moe ffn)
import variants.muon  # noqa: F401  (registers the muon optimizer)
import variants.planted_faults  # noqa: F401  (registers the blind lam_encoder and action_input)
import worldmodel.stages  # noqa: F401  (registers the anchor's components: every model module and the trainer)
from worldmodel.registry import components, describe, lookup, register

__all__ = ["components", "describe", "lookup", "register"]
