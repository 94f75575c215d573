"""The old spelling of dotted keys, ``interop.flatten_dotted``: now `funcgrad.paths`, one way for all.

Kept for a while, with a `DeprecationWarning`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from funcgrad.paths import flatten, unflatten

__all__ = ["flatten_dotted", "unflatten_dotted"]


def flatten_dotted(tree: Any, where: str = "flatten_dotted") -> dict[str, Any]:
    """Deprecated spelling of `funcgrad.paths.flatten`."""
    warnings.warn(
        "funcgrad.interop.flatten_dotted is funcgrad.paths.flatten now", DeprecationWarning, 2
    )
    return flatten(tree, where)


def unflatten_dotted(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Deprecated spelling of `funcgrad.paths.unflatten`."""
    warnings.warn(
        "funcgrad.interop.unflatten_dotted is funcgrad.paths.unflatten now", DeprecationWarning, 2
    )
    return unflatten(flat, "unflatten_dotted")
