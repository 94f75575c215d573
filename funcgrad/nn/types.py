"""The type names the layer modules share: arrays, parameter and state trees, paths, specs.

Plain aliases, for signatures; nothing here runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

Array = jax.Array
Params = dict[str, Any]
State = dict[str, Any]
Cache = dict[str, Any]
Path = tuple[str, ...]
Spec = jax.ShapeDtypeStruct
Initializer = Callable[..., Array]
