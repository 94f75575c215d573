"""Losses as primitives: softmax cross-entropy (integer labels or per-class targets) and sigmoid binary
cross-entropy, from logits, with backward rules that never cancel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from funcgrad.errors import ShapeError
from funcgrad.primitives.checks import float_input
from funcgrad.primitives.logspace import exp_neg_abs, sigmoid_from
from funcgrad.primitives.reductions import lse_parts
from funcgrad.primitives.registry import primitive

Array = jax.Array
# Rows up to this many classes keep the precise mass off the maximum (one complex sum does
# it in a single pass) and recompute exp in the backward pass; longer rows (vocabularies)
# take optax's one-pass sum and keep exp(logits − shift) for the backward pass.
SHORT_ROW = 32


@primitive(name="softmax_cross_entropy", has_residuals=True)
def _softmax_cross_entropy(logits: Array, labels: Array) -> tuple[Array, tuple[Array, ...]]:
    """Per-example softmax cross-entropy for integer labels or per-class targets."""
    integer = jnp.issubdtype(labels.dtype, jnp.integer)
    short = logits.shape[-1] <= SHORT_ROW
    shift, e, rest = lse_parts(logits, jnp.asarray(True), -1, precise=short or not integer)
    if integer:
        picked = jnp.take_along_axis(logits, labels[..., None], axis=-1)
        loss = jnp.log1p(rest) - (picked - shift)
    else:
        # 0·(−inf) counts as 0: a class with zero target weight may have a −inf logit.
        nll = jnp.log1p(rest) - (logits - shift)
        loss = jnp.sum(jnp.where(labels == 0, 0, labels * nll), axis=-1, keepdims=True)
    return loss[..., 0], ((shift, rest) if short else (shift, rest, e))


@_softmax_cross_entropy.backward
def _(
    inputs: tuple[Array, Array],
    output: Array,
    output_grad: Array,
    residuals: tuple[Array, ...],
) -> tuple[Array, Array | None]:
    logits, labels = inputs
    shift, rest, *kept = residuals
    g = output_grad[..., None]
    # Short rows recompute exp (XLA fuses it into this pass); long rows kept it, as a second
    # exp per logit would cost more than the memory traffic it saves.
    e = kept[0] if kept else jnp.exp(logits - shift)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        # p − 1 for the labelled class as expm1(log p) = expm1(−loss): no cancellation when
        # that class dominates; p·g elsewhere, one division per row, not per logit.
        labelled = g * jnp.expm1(-output)[..., None]
        scaled = e * (g / (1 + rest))
        if logits.shape[-1] < 256:
            # Short rows: a compare per logit costs less than a scatter per row.
            classes = lax.broadcasted_iota(labels.dtype, logits.shape, logits.ndim - 1)
            return (jnp.where(classes == labels[..., None], labelled, scaled), None)
        # Long rows (a vocabulary): one scattered entry per row, not a compare per logit.
        flat = scaled.reshape(-1, logits.shape[-1])
        rows = jnp.arange(flat.shape[0])
        flat = flat.at[rows, labels.reshape(-1)].set(labelled.reshape(-1), unique_indices=True)
        return (flat.reshape(logits.shape), None)
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
      gives a finite loss and gradient. With integer labels over more than 32 classes
      the loss is summed in one pass, as optax does, exact to an absolute ε; targets
      (one-hot or soft) keep the digits of a tiny loss.

    Example:
      >>> import jax.numpy as jnp, funcgrad as fg
      >>> z = jnp.array([[0.0, -jnp.inf]])
      >>> fg.softmax_cross_entropy(z, jnp.array([0])).tolist()
      [0.0]
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    float_input("softmax_cross_entropy", logits)
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
    e = exp_neg_abs(logits)
    pos = jnp.where(labels == 1, 0, (1 - labels) * jnp.maximum(logits, 0))
    neg = jnp.where(labels == 0, 0, labels * jnp.maximum(-logits, 0))
    return pos + neg + jnp.log1p(e), e


@_sigmoid_binary_cross_entropy.backward
def _(
    inputs: tuple[Array, Array], output: Array, output_grad: Array, residuals: Array
) -> tuple[Array, Array]:
    logits, labels = inputs
    probs = sigmoid_from(logits, residuals)[0]
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
    float_input("sigmoid_binary_cross_entropy", logits)
    labels = jnp.asarray(labels)
    if labels.shape != logits.shape:
        raise ShapeError(
            f"sigmoid_binary_cross_entropy: labels must have the logits' shape {logits.shape}; "
            f"got {labels.shape}"
        )
    return _sigmoid_binary_cross_entropy.bind(logits, labels.astype(logits.dtype))
