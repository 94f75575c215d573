"""Loss functions over batch-first predictions, each reduced to a scalar (mean over the batch by default).

Cross-entropies use funcgrad's stable primitives, so extreme logits give finite losses and gradients.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import jax
import jax.numpy as jnp

from funcgrad.errors import ConfigError, ShapeError
from funcgrad.primitives import stable

# The loss of a linear head by blocks of tokens: a primitive whose public function is the loss
# itself (mean or sum over the counted tokens), so it is re-exported here as it is.
from funcgrad.primitives.linear_cross_entropy import (
    linear_softmax_cross_entropy as linear_softmax_cross_entropy,
)

Array = jax.Array
"""The array type the losses take and return (`jax.Array`)."""
Reduction = Literal["mean", "sum", "none"]
"""How a loss reduces its per-example values: their mean, their sum, or none (one per example)."""


def _reduce(values: Array, reduction: Reduction, name: str) -> Array:
    if reduction != "none" and values.size == 0:
        raise ShapeError(
            f"{name}: the batch is empty (shape {values.shape}); its {reduction} is undefined"
        )
    if reduction == "mean":
        return jnp.mean(values)
    if reduction == "sum":
        return jnp.sum(values)
    if reduction == "none":
        return values
    raise ConfigError(f"{name}: reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")


def _same_shape(name: str, a: Array, b: Array) -> None:
    if jnp.shape(a) != jnp.shape(b):
        raise ShapeError(
            f"{name}: predictions have shape {jnp.shape(a)} but targets have shape {jnp.shape(b)}; "
            "they must match (funcgrad does not broadcast losses silently)"
        )


def mse(predictions: Array, targets: Array) -> Array:
    """Mean of squared differences over every element, as Torch's ``MSECriterion``.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcgrad import losses
      >>> float(losses.mse(jnp.array([1.0, 3.0]), jnp.array([0.0, 0.0])))
      5.0
    """
    predictions, targets = jnp.asarray(predictions), jnp.asarray(targets)
    _same_shape("mse", predictions, targets)
    return _reduce(jnp.square(predictions - targets), "mean", "mse")


def squared_error(predictions: Array, targets: Array, *, reduction: Reduction = "mean") -> Array:
    """½(y − t)² per element, then ``reduction``: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcgrad import losses
      >>> float(losses.squared_error(jnp.array([3.0]), jnp.array([1.0]), reduction="sum"))
      2.0
    """
    predictions, targets = jnp.asarray(predictions), jnp.asarray(targets)
    _same_shape("squared_error", predictions, targets)
    return _reduce(0.5 * jnp.square(predictions - targets), reduction, "squared_error")


def softmax_cross_entropy(
    logits: Array,
    labels: Array,
    *,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
) -> Array:
    """Cross-entropy of softmax(logits) against integer labels or one-hot/soft targets.

    Args:
      logits: ``(batch, ..., classes)``.
      labels: integer classes ``(batch, ...)`` or targets ``(batch, ..., classes)``.
      label_smoothing: mix the targets with the uniform distribution by this weight.
      reduction: ``"mean"`` over examples (default), ``"sum"`` or ``"none"``.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcgrad import losses
      >>> round(float(losses.softmax_cross_entropy(jnp.zeros((2, 4)), jnp.array([0, 3]))), 4)
      1.3863
    """
    logits = jnp.asarray(logits)
    if not 0 <= label_smoothing < 1:
        raise ConfigError(
            f"softmax_cross_entropy: label_smoothing must be in [0, 1); got {label_smoothing}"
        )
    if label_smoothing:
        labels = jnp.asarray(labels)
        if jnp.issubdtype(labels.dtype, jnp.integer) and labels.shape == logits.shape[:-1]:
            labels = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
        k = logits.shape[-1]
        labels = labels * (1 - label_smoothing) + label_smoothing / k
    per_example = stable.softmax_cross_entropy(logits, labels)
    return _reduce(per_example, reduction, "softmax_cross_entropy")


def sigmoid_binary_cross_entropy(
    logits: Array, labels: Array, *, reduction: Reduction = "mean"
) -> Array:
    """Binary cross-entropy from logits, elementwise, then mean over every element.

    Example:
      >>> from funcgrad import losses
      >>> float(losses.sigmoid_binary_cross_entropy(-1000.0, 0.0))
      0.0
    """
    values = stable.sigmoid_binary_cross_entropy(logits, labels)
    return _reduce(values, reduction, "sigmoid_binary_cross_entropy")


def nll(log_probs: Array, labels: Array, *, reduction: Reduction = "mean") -> Array:
    """Negative log-likelihood of integer ``labels`` under ``log_probs`` ``(batch, ..., classes)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcgrad import losses
      >>> round(float(losses.nll(jnp.log(jnp.array([[0.5, 0.5]])), jnp.array([1]))), 6)
      0.693147
    """
    log_probs, labels = jnp.asarray(log_probs), jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer) or labels.shape != log_probs.shape[:-1]:
        raise ShapeError(
            f"nll: labels must be integers of shape {log_probs.shape[:-1]}; got "
            f"{labels.dtype}{labels.shape}"
        )
    picked = jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    return _reduce(-picked, reduction, "nll")


def huber(
    predictions: Array, targets: Array, *, delta: float = 1.0, reduction: Reduction = "mean"
) -> Array:
    """½r² for |r| ≤ delta, delta·(|r| − ½delta) beyond, with r = y − t.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcgrad import losses
      >>> losses.huber(jnp.array([0.5, 3.0]), jnp.zeros(2), reduction="none").tolist()
      [0.125, 2.5]
    """
    predictions, targets = jnp.asarray(predictions), jnp.asarray(targets)
    _same_shape("huber", predictions, targets)
    if delta <= 0:
        raise ConfigError(f"huber: delta must be positive; got {delta}")
    r = jnp.abs(predictions - targets)
    quadratic = jnp.minimum(r, delta)
    values = 0.5 * quadratic**2 + delta * (r - quadratic)
    return _reduce(values, reduction, "huber")


BIASES_AND_NORMS = ("b", "bias", "bo", "bq", "bk", "bv", "scale")
"""Leaf names that `l2_penalty(..., exclude=BIASES_AND_NORMS)` leaves out."""


def l2_penalty(params: Any, scale: float = 1.0, *, exclude: Iterable[str] = ()) -> Array:
    """λ·½‖w‖² summed over every leaf of a parameter tree.

    Args:
      params: any pytree of arrays (nested dicts from ``init``).
      scale: λ.
      exclude: leaf key names to leave out, e.g. `BIASES_AND_NORMS`.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcgrad import losses
      >>> params = {"dense_0": {"w": jnp.array([3.0]), "b": jnp.array([4.0])}}
      >>> round(float(losses.l2_penalty(params, 0.1)), 6)
      1.25
      >>> round(float(losses.l2_penalty(params, 0.1, exclude=("b",))), 6)
      0.45
    """
    skip = set(exclude)
    total = jnp.zeros(())
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        last = path[-1] if path else None
        name = getattr(last, "key", getattr(last, "name", None))
        if name in skip:
            continue
        total = total + jnp.sum(jnp.square(leaf))
    return 0.5 * scale * total
