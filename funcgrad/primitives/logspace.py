"""Elementwise functions in log space and near their singularities, each with a backward rule that
keeps every digit: softplus, log-sigmoid, sigmoid, logaddexp, log1mexp, xlogy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcgrad.primitives.checks import float_input, same_shape
from funcgrad.primitives.registry import primitive

Array = jax.Array


# --- softplus family -------------------------------------------------------------------------
# Each forward computes e = exp(−|x|) once and hands it to the backward rule as a residual: the
# value and the gradient then cost one exp together, and neither ever overflows.


def exp_neg_abs(x: Array) -> Array:
    """exp(−|x|), never overflowing, with the right second derivative at 0.

    Example:
      >>> from funcgrad.primitives.logspace import exp_neg_abs
      >>> float(exp_neg_abs(-0.0))
      1.0
    """
    # where, not abs: abs has derivative 0 at 0, which would make second derivatives wrong there.
    return jnp.exp(jnp.where(x >= 0, -x, x))


def sigmoid_from(x: Array, e: Array) -> tuple[Array, Array]:
    """(σ(x), σ(−x)) from e = exp(−|x|), each to full relative precision.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcgrad.primitives.logspace import exp_neg_abs, sigmoid_from
      >>> x = jnp.float64(0.0)
      >>> [float(v) for v in sigmoid_from(x, exp_neg_abs(x))]
      [0.5, 0.5]
    """
    r = 1 / (1 + e)
    return jnp.where(x >= 0, r, e * r), jnp.where(x >= 0, e * r, r)


@primitive(has_residuals=True)
def log1pexp(x: Array) -> tuple[Array, Array]:
    """log(1 + exp(x)), the softplus, without overflow: max(x, 0) + log1p(exp(−|x|)).

    Example:
      >>> import funcgrad as fg
      >>> round(float(fg.log1pexp(4.5)), 5)
      4.51105
    """
    float_input("log1pexp", x)
    e = exp_neg_abs(x)
    return jnp.maximum(x, 0) + jnp.log1p(e), e


@log1pexp.backward
def _(inputs: tuple[Array], output: Array, output_grad: Array, residuals: Array) -> tuple[Array]:
    # dy·σ(x), not the textbook dy·(1 − 1/(1 + eˣ)), which cancels to 0 below x ≈ −16.6.
    return (output_grad * sigmoid_from(inputs[0], residuals)[0],)


@primitive(has_residuals=True)
def log_sigmoid(x: Array) -> tuple[Array, Array]:
    """log σ(x) = min(x, 0) − log1p(exp(−|x|)), finite for every finite x.

    Example:
      >>> import funcgrad as fg
      >>> float(fg.log_sigmoid(-100.0))
      -100.0
    """
    float_input("log_sigmoid", x)
    e = exp_neg_abs(x)
    return jnp.minimum(x, 0) - jnp.log1p(e), e


@log_sigmoid.backward
def _(inputs: tuple[Array], output: Array, output_grad: Array, residuals: Array) -> tuple[Array]:
    return (output_grad * sigmoid_from(inputs[0], residuals)[1],)


@primitive(has_residuals=True)
def sigmoid(x: Array) -> tuple[Array, Array]:
    """The logistic function σ(x) = 1 / (1 + exp(−x)); backward dy·σ(x)·σ(−x), computed stably.

    Example:
      >>> import funcgrad as fg
      >>> float(fg.sigmoid(0.0))
      0.5
    """
    float_input("sigmoid", x)
    y, z = sigmoid_from(x, exp_neg_abs(x))
    return y, z


@sigmoid.backward
def _(inputs: tuple[Array], output: Array, output_grad: Array, residuals: Array) -> tuple[Array]:
    # Torch's y·(1 − y) up to x = 2, where it is within a few ulp (1 − y is exact for y ≥ ½ and
    # y's rounding is amplified only by y/(1 − y) ≤ 7.4); beyond, 1 − y cancels (to 0 in float32
    # from x ≈ 17), so use z·(1 − z) with z = σ(−x), which keeps every digit.
    (x,), y, z = inputs, output, residuals
    return (output_grad * jnp.where(x <= 2, y * (1 - y), z * (1 - z)),)


@primitive(has_residuals=True)
def logaddexp(a: Array, b: Array) -> tuple[Array, Array]:
    """log(exp(a) + exp(b)) without overflow; both −inf gives −inf with zero gradients.

    ``a`` and ``b`` must have the same shape (broadcast them first).

    Example:
      >>> import funcgrad as fg
      >>> float(fg.logaddexp(1000.0, 1000.0)) - 1000.0 > 0.69
      True
    """
    same_shape("logaddexp", a, b)
    float_input("logaddexp", a)
    d = a - b  # NaN when both are the same infinity
    e = exp_neg_abs(d)
    return jnp.where(jnp.isnan(d), a + b, jnp.maximum(a, b) + jnp.log1p(e)), e


@logaddexp.backward
def _(
    inputs: tuple[Array, Array], output: Array, output_grad: Array, residuals: Array
) -> tuple[Array, Array]:
    a, b = inputs
    d = a - b
    wa, wb = sigmoid_from(d, residuals)  # σ(a − b), σ(b − a)
    tie = jnp.where(a > 0, 0.5, 0.0).astype(a.dtype)  # both +inf: ½ each; both −inf: 0
    both_inf = jnp.isinf(a) & (a == b)
    return (output_grad * jnp.where(both_inf, tie, wa), output_grad * jnp.where(both_inf, tie, wb))


# --- logs near their singularities -----------------------------------------------------------


@primitive
def log1mexp(x: Array) -> Array:
    """log(1 − exp(−x)) for x ≥ 0, by Mächler's switch at log 2.

    Below log 2, log(−expm1(−x)); above, log1p(−exp(−x)): each single formula
    loses all precision on the other side.

    Example:
      >>> import funcgrad as fg
      >>> float(fg.log1mexp(50.0)) < 0
      True
    """
    float_input("log1mexp", x)
    small = x <= jnp.log(2.0).astype(x.dtype)
    return jnp.where(small, jnp.log(-jnp.expm1(-x)), jnp.log1p(-jnp.exp(-x)))


@log1mexp.backward
def _(inputs: tuple[Array], output: Array, output_grad: Array) -> tuple[Array]:
    (x,) = inputs
    return (output_grad / jnp.expm1(x),)


@primitive
def xlogy(x: Array, y: Array) -> Array:
    """x·log(y), defined as 0 wherever x = 0, whatever y.

    Example:
      >>> import funcgrad as fg
      >>> float(fg.xlogy(0.0, 0.0))
      0.0
    """
    same_shape("xlogy", x, y)
    float_input("xlogy", x)
    return jnp.where(x == 0, jnp.zeros_like(x), x * jnp.log(jnp.where(x == 0, 1, y)))


@xlogy.backward
def _(inputs: tuple[Array, Array], output: Array, output_grad: Array) -> tuple[Array, Array]:
    x, y = inputs
    dy = jnp.where(x == 0, 0, x / jnp.where(x == 0, 1, y))
    return (output_grad * jnp.log(y), output_grad * dy)
