"""The built-in primitives: numerically stable forms with hand-written backward rules.

Each is registered through the public `primitive` decorator, exactly as a user's would be.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax import lax

from funcgrad.errors import ConfigError, DTypeError, ShapeError
from funcgrad.primitives.registry import primitive

Array = jax.Array
Axis = int | tuple[int, ...] | None


def _where_finite(x: Array, fill: float = 0.0) -> Array:
    return jnp.where(jnp.isfinite(x), x, fill)


# --- softplus family -------------------------------------------------------------------------
# Each forward computes e = exp(−|x|) once and hands it to the backward rule as a residual: the
# value and the gradient then cost one exp together, and neither ever overflows.


def _exp_neg_abs(x: Array) -> Array:
    # where, not abs: abs has derivative 0 at 0, which would make second derivatives wrong there.
    return jnp.exp(jnp.where(x >= 0, -x, x))


def _sigmoid_from(x: Array, e: Array) -> tuple[Array, Array]:
    """(σ(x), σ(−x)) from e = exp(−|x|), each to full relative precision."""
    r = 1 / (1 + e)
    return jnp.where(x >= 0, r, e * r), jnp.where(x >= 0, e * r, r)


@primitive(has_residuals=True)
def log1pexp(x: Array) -> tuple[Array, Array]:
    """log(1 + exp(x)), the softplus, without overflow: max(x, 0) + log1p(exp(−|x|)).

    Example:
      >>> import funcgrad as fg
      >>> round(float(fg.log1pexp(4.5)), 12)
      4.511047744849
    """
    _float_input("log1pexp", x)
    e = _exp_neg_abs(x)
    return jnp.maximum(x, 0) + jnp.log1p(e), e


@log1pexp.backward
def _(inputs: tuple[Array], output: Array, output_grad: Array, residuals: Array) -> tuple[Array]:
    # dy·σ(x), not the textbook dy·(1 − 1/(1 + eˣ)), which cancels to 0 below x ≈ −16.6.
    return (output_grad * _sigmoid_from(inputs[0], residuals)[0],)


@primitive(has_residuals=True)
def log_sigmoid(x: Array) -> tuple[Array, Array]:
    """log σ(x) = min(x, 0) − log1p(exp(−|x|)), finite for every finite x.

    Example:
      >>> import funcgrad as fg
      >>> float(fg.log_sigmoid(-100.0))
      -100.0
    """
    _float_input("log_sigmoid", x)
    e = _exp_neg_abs(x)
    return jnp.minimum(x, 0) - jnp.log1p(e), e


@log_sigmoid.backward
def _(inputs: tuple[Array], output: Array, output_grad: Array, residuals: Array) -> tuple[Array]:
    return (output_grad * _sigmoid_from(inputs[0], residuals)[1],)


@primitive(has_residuals=True)
def sigmoid(x: Array) -> tuple[Array, Array]:
    """The logistic function σ(x) = 1 / (1 + exp(−x)); backward dy·σ(x)·σ(−x), computed stably.

    Example:
      >>> import funcgrad as fg
      >>> float(fg.sigmoid(0.0))
      0.5
    """
    _float_input("sigmoid", x)
    y, z = _sigmoid_from(x, _exp_neg_abs(x))
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
    _same_shape("logaddexp", a, b)
    _float_input("logaddexp", a)
    d = a - b  # NaN when both are the same infinity
    e = _exp_neg_abs(d)
    return jnp.where(jnp.isnan(d), a + b, jnp.maximum(a, b) + jnp.log1p(e)), e


@logaddexp.backward
def _(
    inputs: tuple[Array, Array], output: Array, output_grad: Array, residuals: Array
) -> tuple[Array, Array]:
    a, b = inputs
    d = a - b
    wa, wb = _sigmoid_from(d, residuals)  # σ(a − b), σ(b − a)
    tie = jnp.where(a > 0, 0.5, 0.0).astype(a.dtype)  # both +inf: ½ each; both −inf: 0
    both_inf = jnp.isinf(a) & (a == b)
    return (output_grad * jnp.where(both_inf, tie, wa), output_grad * jnp.where(both_inf, tie, wb))


# --- reductions over an axis -----------------------------------------------------------------


def _mask(x: Array, where: Array | None) -> Array:
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


def _lse_parts(
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
    """
    # No stop_gradient on the shift: rest leaves the top entry out, so its derivative flows
    # through the shift (second derivatives differentiate this function).
    top = jnp.max(jnp.where(where, x, -jnp.inf), axis=axis, keepdims=True)
    finite = jnp.isfinite(top)
    shift = _where_finite(top)
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
    if math.prod(x.shape[a] for a in _axes(axis, x.ndim)) <= 32:
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
    shift, e, rest = _lse_parts(x, where, axis, precise=False)
    out = shift + jnp.log1p(rest)
    return (out if keepdims else jnp.squeeze(out, axis=_axes(axis, x.ndim))), (e, rest)


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
        output_grad = jnp.expand_dims(output_grad, _axes(axis, x.ndim))
    # e / (1 + rest) is the softmax; a row of all −inf (or all masked) has e = 0: zero gradient.
    return (e * (output_grad / (1 + rest)), None)


@_logsumexp.public
def logsumexp(
    x: Array, axis: Axis = None, *, keepdims: bool = False, where: Array | None = None
) -> Array:
    """log Σ exp(x) over ``axis``, stable; ``where`` masks entries out of the sum.

    A row whose entries are all −inf or all masked gives −inf and zero gradients.

    Example:
      >>> import jax.numpy as jnp, funcgrad as fg
      >>> float(fg.logsumexp(jnp.array([-jnp.inf, -jnp.inf])))
      -inf
    """
    x = jnp.asarray(x)
    _float_input("logsumexp", x)
    return _logsumexp.bind(x, _mask(x, where), axis=_norm_axis(axis), keepdims=keepdims)


@primitive(name="softmax")
def _softmax(x: Array, where: Array, *, axis: Axis) -> Array:
    """Softmax over axis, masked by where; fully masked rows give 0."""
    _, e, rest = _lse_parts(x, where, axis)
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
    _float_input("softmax", x)
    return _softmax.bind(x, _mask(x, where), axis=_norm_axis(axis))


def _log_softmax_parts(x: Array, where: Array, axis: Axis) -> tuple[Array, Array]:
    """(log-probabilities, probabilities); −inf and 0 where masked or the row is all −inf."""
    shift, e, rest = _lse_parts(x, where, axis)
    live = where & jnp.isfinite(shift)
    log_probs = (x - _where_finite(shift)) - jnp.log1p(rest)
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
    _float_input("log_softmax", x)
    return _log_softmax.bind(x, _mask(x, where), axis=_norm_axis(axis))


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
    _float_input("log1mexp", x)
    small = x <= jnp.log(2.0).astype(x.dtype)
    return jnp.where(small, jnp.log(-jnp.expm1(-x)), jnp.log1p(-jnp.exp(-x)))


@log1mexp.backward
def _(inputs: tuple[Array], output: Array, output_grad: Array) -> tuple[Array]:
    (x,) = inputs
    return (output_grad / jnp.expm1(x),)


@primitive(name="safe_norm")
def _safe_norm(x: Array, *, axis: Axis, keepdims: bool) -> Array:
    """Euclidean norm without overflow or underflow; gradient 0 at 0."""
    scale = jnp.max(jnp.abs(x), axis=axis, keepdims=True)
    scale = lax.stop_gradient(jnp.where((scale > 0) & jnp.isfinite(scale), scale, 1))
    out = scale * jnp.sqrt(jnp.sum(jnp.square(x / scale), axis=axis, keepdims=True))
    return out if keepdims else jnp.squeeze(out, axis=_axes(axis, x.ndim))


@_safe_norm.backward
def _(
    inputs: tuple[Array], output: Array, output_grad: Array, *, axis: Axis, keepdims: bool
) -> tuple[Array]:
    (x,) = inputs
    if not keepdims:
        output = jnp.expand_dims(output, _axes(axis, x.ndim))
        output_grad = jnp.expand_dims(output_grad, _axes(axis, x.ndim))
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
    _float_input("safe_norm", x)
    return _safe_norm.bind(x, axis=_norm_axis(axis), keepdims=keepdims)


@primitive
def xlogy(x: Array, y: Array) -> Array:
    """x·log(y), defined as 0 wherever x = 0, whatever y.

    Example:
      >>> import funcgrad as fg
      >>> float(fg.xlogy(0.0, 0.0))
      0.0
    """
    _same_shape("xlogy", x, y)
    _float_input("xlogy", x)
    return jnp.where(x == 0, jnp.zeros_like(x), x * jnp.log(jnp.where(x == 0, 1, y)))


@xlogy.backward
def _(inputs: tuple[Array, Array], output: Array, output_grad: Array) -> tuple[Array, Array]:
    x, y = inputs
    dy = jnp.where(x == 0, 0, x / jnp.where(x == 0, 1, y))
    return (output_grad * jnp.log(y), output_grad * dy)


# --- losses as primitives --------------------------------------------------------------------


@primitive(name="softmax_cross_entropy", has_residuals=True)
def _softmax_cross_entropy(
    logits: Array, labels: Array
) -> tuple[Array, tuple[Array, Array, Array]]:
    """Per-example softmax cross-entropy for integer labels or per-class targets."""
    integer = jnp.issubdtype(labels.dtype, jnp.integer)
    shift, e, rest = _lse_parts(logits, jnp.asarray(True), -1, precise=not integer)
    if integer:
        picked = jnp.take_along_axis(logits, labels[..., None], axis=-1)
        loss = jnp.log1p(rest) - (picked - shift)
    else:
        # 0·(−inf) counts as 0: a class with zero target weight may have a −inf logit.
        nll = jnp.log1p(rest) - (logits - shift)
        loss = jnp.sum(jnp.where(labels == 0, 0, labels * nll), axis=-1, keepdims=True)
    return loss[..., 0], (shift, rest, e)


@_softmax_cross_entropy.backward
def _(
    inputs: tuple[Array, Array],
    output: Array,
    output_grad: Array,
    residuals: tuple[Array, Array, Array],
) -> tuple[Array, Array | None]:
    logits, labels = inputs
    shift, rest, e = residuals
    g = output_grad[..., None]
    # exp(logits − shift) is kept from the forward pass: recomputing it costs a second exp
    # per logit, more than the memory traffic it saves.
    if jnp.issubdtype(labels.dtype, jnp.integer):
        classes = lax.broadcasted_iota(labels.dtype, logits.shape, logits.ndim - 1)
        # p − 1 for the labelled class as expm1(log p) = expm1(−loss): no cancellation when
        # that class dominates. One division per row, not per logit.
        labelled = g * jnp.expm1(-output)[..., None]
        return (jnp.where(classes == labels[..., None], labelled, e * (g / (1 + rest))), None)
    probs = e / (1 + rest)
    total = jnp.sum(labels, axis=-1, keepdims=True)
    log_probs = jnp.where(jnp.isfinite(logits), logits - shift - jnp.log1p(rest), -jnp.inf)
    return (g * (probs * total - labels), -g * log_probs)


@_softmax_cross_entropy.public
def softmax_cross_entropy(logits: Array, labels: Array) -> Array:
    """Per-example −Σ t·log softmax(z) over the last axis, for integer labels or per-class targets.

    Args:
      logits: ``(..., classes)``.
      labels: integer class indices of shape ``(...)``, or targets (one-hot or
        soft) of shape ``(..., classes)``.

    Returns:
      The loss per example, shape ``(...)``. A −inf logit whose target is 0
      gives a finite loss and gradient.

    Example:
      >>> import jax.numpy as jnp, funcgrad as fg
      >>> z = jnp.array([[0.0, -jnp.inf]])
      >>> fg.softmax_cross_entropy(z, jnp.array([0])).tolist()
      [0.0]
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    _float_input("softmax_cross_entropy", logits)
    if logits.ndim == 0:
        raise ShapeError(
            "softmax_cross_entropy: logits need a class axis, shape (..., classes); got a scalar"
        )
    integer = jnp.issubdtype(labels.dtype, jnp.integer)
    if integer and labels.shape != logits.shape[:-1]:
        raise ShapeError(
            f"softmax_cross_entropy: integer labels must have shape {logits.shape[:-1]} "
            f"(the logits' shape without the class axis); got {labels.shape}"
        )
    if not integer:
        if labels.shape != logits.shape:
            raise ShapeError(
                f"softmax_cross_entropy: labels of shape {labels.shape} fit neither integer "
                f"class labels {logits.shape[:-1]} nor per-class targets {logits.shape}"
            )
        labels = labels.astype(logits.dtype)
    return _softmax_cross_entropy.bind(logits, labels)


@primitive(name="sigmoid_binary_cross_entropy", has_residuals=True)
def _sigmoid_binary_cross_entropy(logits: Array, labels: Array) -> tuple[Array, Array]:
    """Elementwise binary cross-entropy from logits."""
    # (1 − t)·max(x, 0) + t·max(−x, 0) + log1p(e^{−|x|}), with 0·inf as 0 at infinite logits.
    e = _exp_neg_abs(logits)
    pos = jnp.where(labels == 1, 0, (1 - labels) * jnp.maximum(logits, 0))
    neg = jnp.where(labels == 0, 0, labels * jnp.maximum(-logits, 0))
    return pos + neg + jnp.log1p(e), e


@_sigmoid_binary_cross_entropy.backward
def _(
    inputs: tuple[Array, Array], output: Array, output_grad: Array, residuals: Array
) -> tuple[Array, Array]:
    logits, labels = inputs
    probs = _sigmoid_from(logits, residuals)[0]
    return (output_grad * (probs - labels), -output_grad * logits)


@_sigmoid_binary_cross_entropy.public
def sigmoid_binary_cross_entropy(logits: Array, labels: Array) -> Array:
    """Elementwise −t·log σ(z) − (1 − t)·log(1 − σ(z)), from logits, stable at any magnitude.

    Example:
      >>> import funcgrad as fg
      >>> float(fg.sigmoid_binary_cross_entropy(1000.0, 1.0))
      0.0
    """
    logits = jnp.asarray(logits)
    _float_input("sigmoid_binary_cross_entropy", logits)
    labels = jnp.asarray(labels)
    if labels.shape != logits.shape:
        raise ShapeError(
            f"sigmoid_binary_cross_entropy: labels must have the logits' shape {logits.shape}; "
            f"got {labels.shape}"
        )
    return _sigmoid_binary_cross_entropy.bind(logits, labels.astype(logits.dtype))


# --- gradient tools --------------------------------------------------------------------------


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
    _float_input("clip_gradient", x)
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
    _float_input("scale_gradient", x)
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
    _float_input("straight_through", x)
    return _straight_through.bind(x, fn=fn)


# --- argument checks -------------------------------------------------------------------------


def _float_input(name: str, x: Array) -> None:
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        raise DTypeError(f"{name}: expected a floating-point array; got dtype {x.dtype}")


def _same_shape(name: str, a: Array, b: Array) -> None:
    if jnp.shape(a) != jnp.shape(b):
        raise ShapeError(
            f"{name}: both inputs must have the same shape; got {jnp.shape(a)} and "
            f"{jnp.shape(b)} (broadcast them first)"
        )


def _norm_axis(axis: Axis) -> Axis:
    return tuple(axis) if isinstance(axis, list) else axis


def _axes(axis: Axis, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    return tuple(a % ndim for a in ((axis,) if isinstance(axis, int) else axis))
