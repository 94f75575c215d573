"""Flatten and Reshape: change the shape of everything but the batch axis.

Both are parameterless layers; the batch axis (axis 0) is never touched.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from funcgrad.errors import ShapeError
from funcgrad.nn.layer import Array, Context, ParamLayer, Params, Path, Spec, require_rank
from funcgrad.paths import describe


@dataclasses.dataclass(frozen=True)
class Flatten(ParamLayer):
    """``(batch, d1, d2, ...) -> (batch, d1 * d2 * ...)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcgrad import nn
      >>> nn.Flatten()(jnp.zeros((2, 3, 4))).shape
      (2, 12)
    """

    name: str | None = None
    kind = "flatten"

    def check_input(self, x: Spec, path: Path) -> None:
        require_rank(x, tuple(range(1, 33)), path, "Flatten", "(batch, ...)")

    def forward(self, params: Params, x: Array, ctx: Context, path: Path) -> Array:
        return x.reshape(x.shape[0], -1)


@dataclasses.dataclass(frozen=True)
class Reshape(ParamLayer):
    """``(batch, ...) -> (batch, *shape)``; one entry of ``shape`` may be -1.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcgrad import nn
      >>> nn.Reshape((2, -1))(jnp.zeros((5, 12))).shape
      (5, 2, 6)
    """

    shape: tuple[int, ...]
    name: str | None = None
    kind = "reshape"

    def check_input(self, x: Spec, path: Path) -> None:
        require_rank(x, tuple(range(1, 33)), path, "Reshape", "(batch, ...)")
        size = math.prod(x.shape[1:])
        known = math.prod(d for d in self.shape if d != -1)
        fits = size % known == 0 if -1 in self.shape else size == known
        if list(self.shape).count(-1) > 1 or not fits:
            raise ShapeError(
                f"Reshape at {describe(path)}: cannot reshape per-example shape "
                f"{tuple(x.shape[1:])} ({size} values) to {tuple(self.shape)}"
            )

    def forward(self, params: Params, x: Array, ctx: Context, path: Path) -> Array:
        return jnp.reshape(x, (x.shape[0], *self.shape))
