"""Variant registry and the registered component variants."""
from variants.registry import components, describe, lookup, register

__all__ = ["components", "describe", "lookup", "register"]
