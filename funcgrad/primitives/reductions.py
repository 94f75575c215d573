"""Reductions over an axis: logsumexp, softmax, log_softmax and the Euclidean norm, with masks.

All share `lse_parts`: a row's maximum, exp(x − max), and the mass off the maximum.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from funcgrad.errors import DTypeError, ShapeError
from funcgrad.primitives.checks import Axis, axes, float_input, norm_axis, where_finite
from funcgrad.primitives.registry import primitive

Array = jax.Array


def mask_arg(x: Array, where: Array | None) -> Array:
    """``where=`` checked against ``x``: a boolean mask that broadcasts, or a scalar True.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcgrad.primitives.reductions import mask_arg
      >>> mask_arg(jnp.zeros(3), None).tolist()
      True
    """
    # A scalar True broadcasts inside the primitive, so no all-True array is ever materialised.
    if where is None:
        return jnp.asarray(True)
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        raise DTypeError(f"where must be a boolean mask; got dtype {where.dtype}")
    try:
        jnp.broadcast_shapes(where.shape, x.shape)
    except ValueError:
        raise ShapeError(
            f"where of shape {where.shape} does not broadcast to the input's {x.shape}"
        ) from None
    return where


def lse_parts(
    x: Array, where: Array, axis: Axis, *, precise: bool = True
) -> tuple[Array, Array, Array]:
    """``(shift, e, rest)``: logsumexp = shift + log1p(rest) and softmax = e / (1 + rest).

    ``shift`` is the row maximum (keepdims), ``e`` = exp(x − shift) (0 where masked) and
    ``rest`` sums e over every entry but one maximal one.

    ``precise`` keeps the digits of a small ``rest``: log1p(rest) then keeps what
    log(1 + rest) loses when one entry dominates (log_softmax of [30, 1, −2] is −2.7e−13,
    not 0). It costs a second pass over the row; without it ``rest`` is Σe − 1, exact to
    an absolute ε, which is all a value far from 0 (a logsumexp, a cross-entropy of a wrong
    or unsure prediction) needs.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcgrad.primitives.reductions import lse_parts
      >>> shift, e, rest = lse_parts(jnp.array([0.0, 0.0]), jnp.asarray(True), -1)
      >>> float(shift[0]), e.tolist(), float(rest[0])
      (0.0, [1.0, 1.0], 1.0)
    """
    # No stop_gradient on the shift: rest leaves the top entry out, so its derivative flows
    # through the shift (second derivatives differentiate this function).
    top = jnp.max(jnp.where(where, x, -jnp.inf), axis=axis, keepdims=True)
    finite = jnp.isfinite(top)
    shift = where_finite(top)
    e = jnp.where(where, jnp.exp(x - shift), 0)
    wide = e.astype(jnp.promote_types(e.dtype, jnp.float32))
    if not precise:
        # One pass, as jax.nn.logsumexp: the top entry's e is 1, so Σe − 1 is the rest.
        rest = (jnp.sum(wide, axis=axis, keepdims=True) - 1).astype(x.dtype)
        return jnp.where(finite, shift, top), e, jnp.where(finite, rest, 0)
    # e ≤ 1 with equality exactly at the maxima, so e − floor(e) is the mass off the maxima and
    # floor(e) counts them. A compare-and-select inside the reduction is 10× slower on XLA:CPU.
    # Whatever floor decides, rest = Σ(e − floor e) + (Σ floor e − 1) = Σe − 1 exactly in
    # algebra: when XLA recomputes x in two fusions and the top's e is 1 − δ, only the extra
    # digits are lost, never the value.
    off_top = wide - jnp.floor(wide)
    if math.prod(x.shape[a] for a in axes(axis, x.ndim)) <= 32:
        # Short rows: one complex sum carries both accumulators in a single pass.
        total = jnp.sum(lax.complex(off_top, wide - off_top), axis=axis, keepdims=True)
        others, count = total.real, total.imag
    else:
        # Long rows: two vectorised float sums; the count is their (integer) difference.
        others = jnp.sum(off_top, axis=axis, keepdims=True)
        count = jnp.round(jnp.sum(wide, axis=axis, keepdims=True) - others)
    rest = (others + (count - 1)).astype(x.dtype)
    rest = jnp.where(finite, rest, 0)
    return jnp.where(finite, shift, top), e, rest


@primitive(name="logsumexp", has_residuals=True)
def _logsumexp(
    x: Array, where: Array, *, axis: Axis = None, keepdims: bool = False
) -> tuple[Array, tuple[Array, Array]]:
    """log Σ exp(x) over axis, masked by where; all −inf rows give −inf, zero gradients."""
    shift, e, rest = lse_parts(x, where, axis, precise=False)
    out = shift + jnp.log1p(rest)
    return (out if keepdims else jnp.squeeze(out, axis=axes(axis, x.ndim))), (e, rest)


@_logsumexp.backward
def _(
    inputs: tuple[Array, Array],
    output: Array,
    output_grad: Array,
    *,
    axis: Axis,
    keepdims: bool,
    residuals: tuple[Array, Array],
) -> tuple[Array, None]:
    x, _ = inputs
    e, rest = residuals
    if not keepdims:
        output_grad = jnp.expand_dims(output_grad, axes(axis, x.ndim))
    # e / (1 + rest) is the softmax; a row of all −inf (or all masked) has e = 0: zero gradient.
    return (e * (output_grad / (1 + rest)), None)


@_logsumexp.public
def logsumexp(
    x: Array, axis: Axis = None, *, keepdims: bool = False, where: Array | None = None
) -> Array:
    """log Σ exp(x) over ``axis``, stable; ``where`` masks entries out of the sum.

    A row whose entries are all −inf or all masked gives −inf and zero gradients. One pass
    over the row, as `jax.nn.logsumexp`: the result is exact to an absolute ε, so a result
    tiny against 1 (``logsumexp([0, −30])``) loses its digits; `log_softmax` keeps them.

    Example:
      >>> import jax.numpy as jnp, funcgrad as fg
      >>> float(fg.logsumexp(jnp.array([-jnp.inf, -jnp.inf])))
      -inf
    """
    x = jnp.asarray(x)
    float_input("logsumexp", x)
    return _logsumexp.bind(x, mask_arg(x, where), axis=norm_axis(axis), keepdims=keepdims)


@primitive(name="softmax")
def _softmax(x: Array, where: Array, *, axis: Axis) -> Array:
    """Softmax over axis, masked by where; fully masked rows give 0."""
    _, e, rest = lse_parts(x, where, axis)
    return e / (1 + rest)


@_softmax.backward
def _(
    inputs: tuple[Array, Array], output: Array, output_grad: Array, *, axis: Axis
) -> tuple[Array, None]:
    inner = jnp.sum(output_grad * output, axis=axis, keepdims=True)
    return (output * (output_grad - inner), None)


@_softmax.public
def softmax(x: Array, axis: Axis = -1, *, where: Array | None = None) -> Array:
    """exp(x) / Σ exp(x) over ``axis``; masked entries and fully masked rows give 0.

    Example:
      >>> import jax.numpy as jnp, funcgrad as fg
      >>> fg.softmax(jnp.array([0.0, 0.0])).tolist()
      [0.5, 0.5]
    """
    x = jnp.asarray(x)
    float_input("softmax", x)
    return _softmax.bind(x, mask_arg(x, where), axis=norm_axis(axis))


def _log_softmax_parts(x: Array, where: Array, axis: Axis) -> tuple[Array, Array]:
    """(log-probabilities, probabilities); −inf and 0 where masked or the row is all −inf."""
    shift, e, rest = lse_parts(x, where, axis)
    live = where & jnp.isfinite(shift)
    log_probs = (x - where_finite(shift)) - jnp.log1p(rest)
    return jnp.where(live, log_probs, -jnp.inf), e / (1 + rest)


@primitive(name="log_softmax", has_residuals=True)
def _log_softmax(x: Array, where: Array, *, axis: Axis) -> tuple[Array, Array]:
    """Log-softmax over axis, masked by where; fully masked rows give −inf."""
    return _log_softmax_parts(x, where, axis)


@_log_softmax.backward
def _(
    inputs: tuple[Array, Array], output: Array, output_grad: Array, *, axis: Axis, residuals: Array
) -> tuple[Array, None]:
    _, where = inputs
    g = jnp.where(where, output_grad, 0)
    return (g - residuals * jnp.sum(g, axis=axis, keepdims=True), None)


@_log_softmax.public
def log_softmax(x: Array, axis: Axis = -1, *, where: Array | None = None) -> Array:
    """x − logsumexp(x) over ``axis``; masked entries and fully masked rows give −inf.

    Example:
      >>> import jax.numpy as jnp, funcgrad as fg
      >>> round(float(fg.log_softmax(jnp.array([0.0, 0.0]))[0]), 6)
      -0.693147
    """
    x = jnp.asarray(x)
    float_input("log_softmax", x)
    return _log_softmax.bind(x, mask_arg(x, where), axis=norm_axis(axis))


@primitive(name="safe_norm")
def _safe_norm(x: Array, *, axis: Axis, keepdims: bool) -> Array:
    """Euclidean norm without overflow or underflow; gradient 0 at 0."""
    scale = jnp.max(jnp.abs(x), axis=axis, keepdims=True)
    # A subnormal scale counts as 0: XLA:CPU flushes subnormals in compiled code, so dividing by
    # one gives 0/0 under jit (the norm of a subnormal vector is then 0, as it is eagerly).
    tiny = jnp.finfo(scale.dtype).tiny
    scale = lax.stop_gradient(jnp.where((scale >= tiny) & jnp.isfinite(scale), scale, 1))
    out = scale * jnp.sqrt(jnp.sum(jnp.square(x / scale), axis=axis, keepdims=True))
    return out if keepdims else jnp.squeeze(out, axis=axes(axis, x.ndim))


@_safe_norm.backward
def _(
    inputs: tuple[Array], output: Array, output_grad: Array, *, axis: Axis, keepdims: bool
) -> tuple[Array]:
    (x,) = inputs
    if not keepdims:
        output = jnp.expand_dims(output, axes(axis, x.ndim))
        output_grad = jnp.expand_dims(output_grad, axes(axis, x.ndim))
    # The norm's gradient x/‖x‖ is undefined at 0; funcgrad takes the subgradient 0.
    safe = jnp.where(output > 0, output, 1)
    return (jnp.where(output > 0, output_grad * (x / safe), 0),)


@_safe_norm.public
def safe_norm(x: Array, axis: Axis = None, *, keepdims: bool = False) -> Array:
    """The Euclidean norm over ``axis``: no overflow at 1e20, no underflow at 1e-23, gradient 0 at 0.

    Example:
      >>> import jax, jax.numpy as jnp, funcgrad as fg
      >>> jax.grad(fg.safe_norm)(jnp.zeros(3)).tolist()
      [0.0, 0.0, 0.0]
    """
    x = jnp.asarray(x)
    float_input("safe_norm", x)
    return _safe_norm.bind(x, axis=norm_axis(axis), keepdims=keepdims)
