"""Argument checks and axis helpers shared by the built-in primitives.

Each names the function it checks for, so a bad input's error says where it came from.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcgrad.errors import DTypeError, ShapeError

Array = jax.Array
Axis = int | tuple[int, ...] | None


def where_finite(x: Array, fill: float = 0.0) -> Array:
    """``x`` with every inf and NaN replaced by ``fill``.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcgrad.primitives.checks import where_finite
      >>> where_finite(jnp.array([1.0, jnp.inf])).tolist()
      [1.0, 0.0]
    """
    return jnp.where(jnp.isfinite(x), x, fill)


def float_input(name: str, x: Array) -> None:
    """Raise a DTypeError naming ``name`` unless ``x`` is floating point.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcgrad.primitives.checks import float_input
      >>> float_input("softmax", jnp.zeros(2))
    """
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        raise DTypeError(f"{name}: expected a floating-point array; got dtype {x.dtype}")


def same_shape(name: str, a: Array, b: Array) -> None:
    """Raise a ShapeError naming ``name`` unless ``a`` and ``b`` have one shape.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcgrad.primitives.checks import same_shape
      >>> same_shape("xlogy", jnp.zeros(2), jnp.zeros(2))
    """
    if jnp.shape(a) != jnp.shape(b):
        raise ShapeError(
            f"{name}: both inputs must have the same shape; got {jnp.shape(a)} and "
            f"{jnp.shape(b)} (broadcast them first)"
        )


def norm_axis(axis: Axis) -> Axis:
    """A list of axes as a tuple, so that it can be a static (hashable) argument.

    Example:
      >>> from funcgrad.primitives.checks import norm_axis
      >>> norm_axis([0, 1])
      (0, 1)
    """
    return tuple(axis) if isinstance(axis, list) else axis


def axes(axis: Axis, ndim: int) -> tuple[int, ...]:
    """``axis`` (None: all) as non-negative axis numbers for an array of rank ``ndim``.

    Example:
      >>> from funcgrad.primitives.checks import axes
      >>> axes(-1, 3), axes(None, 2)
      ((2,), (0, 1))
    """
    if axis is None:
        return tuple(range(ndim))
    return tuple(a % ndim for a in ((axis,) if isinstance(axis, int) else axis))
