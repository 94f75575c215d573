"""Primitives with hand-written derivatives: the registry and the stable built-ins."""

from funcgrad.primitives.registry import Primitive, describe, get, names, primitive

__all__ = ["Primitive", "describe", "get", "names", "primitive"]
