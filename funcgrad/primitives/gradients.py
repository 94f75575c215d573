"""Gradient tools: identity (or rounding) forward passes whose backward rules clip, scale or pass the
gradient straight through.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp

from funcgrad.errors import ConfigError
from funcgrad.primitives.checks import float_input
from funcgrad.primitives.registry import primitive

Array = jax.Array


@primitive(name="clip_gradient", reverse_only=True)
def _clip_gradient(x: Array, lo: Array, hi: Array) -> Array:
    """Identity forward; clips the gradient to [lo, hi] (reverse-only)."""
    return x


@_clip_gradient.backward
def _(inputs: tuple[Array, Array, Array], output: Array, output_grad: Array) -> tuple[Any, ...]:
    _, lo, hi = inputs
    return (jnp.clip(output_grad, lo, hi).astype(output_grad.dtype), None, None)


@_clip_gradient.public
def clip_gradient(x: Array, lo: float | Array, hi: float | Array) -> Array:
    """Identity forward; the backward clips the incoming gradient to [lo, hi]. Reverse-only.

    Example:
      >>> import jax, funcgrad as fg
      >>> float(jax.grad(lambda x: 10 * fg.clip_gradient(x, -1.0, 1.0))(0.0))
      1.0
    """
    x = jnp.asarray(x)
    float_input("clip_gradient", x)
    return _clip_gradient.bind(x, jnp.asarray(lo, x.dtype), jnp.asarray(hi, x.dtype))


@primitive(name="scale_gradient")
def _scale_gradient(x: Array, scale: Array) -> Array:
    """Identity forward; multiplies the gradient by scale."""
    return x


@_scale_gradient.backward
def _(inputs: tuple[Array, Array], output: Array, output_grad: Array) -> tuple[Array, None]:
    return (output_grad * inputs[1], None)


@_scale_gradient.public
def scale_gradient(x: Array, scale: float | Array) -> Array:
    """Identity forward; the backward multiplies the gradient by ``scale`` (−1: gradient reversal).

    Example:
      >>> import jax, funcgrad as fg
      >>> float(jax.grad(lambda x: fg.scale_gradient(x, -1.0))(3.0))
      -1.0
    """
    x = jnp.asarray(x)
    float_input("scale_gradient", x)
    return _scale_gradient.bind(x, jnp.asarray(scale, x.dtype))


@primitive(name="straight_through")
def _straight_through(x: Array, *, fn: str) -> Array:
    """round or sign forward, identity backward."""
    return jnp.round(x) if fn == "round" else jnp.sign(x)


@_straight_through.backward
def _(inputs: tuple[Array], output: Array, output_grad: Array, *, fn: str) -> tuple[Array]:
    return (output_grad,)


@_straight_through.public
def straight_through(x: Array, fn: Literal["round", "sign"] = "round") -> Array:
    """``round(x)`` or ``sign(x)`` forward, identity backward (the straight-through estimator).

    Example:
      >>> import jax, funcgrad as fg
      >>> float(fg.straight_through(0.7)), float(jax.grad(fg.straight_through)(0.7))
      (1.0, 1.0)
    """
    if fn not in ("round", "sign"):
        raise ConfigError(f"straight_through: fn must be 'round' or 'sign'; got {fn!r}")
    x = jnp.asarray(x)
    float_input("straight_through", x)
    return _straight_through.bind(x, fn=fn)
