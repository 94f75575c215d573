"""The cross-entropy of a linear head, softmax(h @ w), reduced over tokens, as one primitive that never
holds the (tokens, vocabulary) logits: it works through blocks of tokens and keeps only each block's.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

from funcgrad.errors import ConfigError, DTypeError, ShapeError
from funcgrad.primitives.checks import float_input
from funcgrad.primitives.registry import primitive

Array = jax.Array
Reduction = Literal["mean", "sum"]
NAME = "linear_softmax_cross_entropy"
BLOCK_SIZE = 256
"""Tokens per block by default: a (256, 32000) float32 block of logits is 31 MiB."""


@primitive(name=NAME, has_residuals=True)
def _linear_softmax_cross_entropy(
    h: Array, w: Array, labels: Array, counted: Array, *, block_size: int, reduction: Reduction
) -> tuple[Array, tuple[Array, Array]]:
    """Σ or mean over counted tokens of −log softmax(h @ w)[label], with both gradients.

    The loss is a scalar, so its cotangent is one number: each block's gradients (softmax minus
    one-hot, through both factors of h @ w) are made here, while its logits are at hand, and
    the backward rule only scales them. Three matrix products per block, as the unblocked
    loss does, and no block of logits is recomputed.
    """
    n, d = h.shape
    compute = jnp.promote_types(jnp.result_type(h, w), jnp.float32)
    count = jnp.sum(counted)
    scale = 1 / jnp.maximum(count, 1).astype(compute) if reduction == "mean" else 1
    block = min(block_size, n)
    blocks = -(-n // block)
    pad = blocks * block - n
    weight = jnp.where(counted, scale, 0).astype(compute)
    if pad:
        h = jnp.pad(h, ((0, pad), (0, 0)))
        labels, weight = jnp.pad(labels, (0, pad)), jnp.pad(weight, (0, pad))

    def step(dw: Array, xs: tuple[Array, Array, Array]) -> tuple[Array, tuple[Array, Array]]:
        hb, yb, wb = xs
        z = jnp.matmul(hb, w, preferred_element_type=compute)
        lse = jax.nn.logsumexp(z, axis=-1, keepdims=True)
        picked = jnp.take_along_axis(z, yb[:, None], axis=-1)
        loss = jnp.sum(wb * (lse - picked)[:, 0])
        # softmax minus one-hot, weighted; the one-hot is a scatter of one entry per token.
        dz = jnp.exp(z - lse) * wb[:, None]
        dz = dz.at[jnp.arange(yb.shape[0]), yb].add(-wb, unique_indices=True)
        # Contract over the shared axis as the arrays lie: no transposed copy of w or h.
        dh = lax.dot_general(
            dz.astype(w.dtype), w, (((1,), (1,)), ((), ())), preferred_element_type=compute
        )
        dw = dw + lax.dot_general(
            hb, dz.astype(h.dtype), (((0,), (0,)), ((), ())), preferred_element_type=compute
        )
        return dw, (loss, dh.astype(h.dtype))

    xs = (h.reshape(blocks, block, d), labels.reshape(blocks, block), weight.reshape(blocks, block))
    dw, (losses, dh) = lax.scan(step, jnp.zeros(w.shape, compute), xs)
    out_dtype = jnp.result_type(h, w)
    return jnp.sum(losses).astype(out_dtype), (dh.reshape(-1, d)[:n], dw.astype(w.dtype))


@_linear_softmax_cross_entropy.backward
def _(
    inputs: tuple[Array, Array, Array, Array],
    output: Array,
    output_grad: Array,
    residuals: tuple[Array, Array],
    **static: object,
) -> tuple[Array, Array, None, None]:
    h, w, _, _ = inputs
    dh, dw = residuals
    return ((output_grad * dh).astype(h.dtype), (output_grad * dw).astype(w.dtype), None, None)


@_linear_softmax_cross_entropy.public
def linear_softmax_cross_entropy(
    h: Array,
    w: Array,
    labels: Array,
    *,
    where: Array | None = None,
    reduction: Reduction = "mean",
    block_size: int = BLOCK_SIZE,
) -> Array:
    """``softmax_cross_entropy(h @ w, labels)`` that never holds the (tokens, vocabulary) logits.

    The loss of a linear head (a language model's last layer) over a large vocabulary, worked
    through ``block_size`` tokens at a time: only one block's logits are ever in memory, and
    the gradients with respect to ``h`` and ``w`` are made in the same pass, while the block's
    logits are at hand. The compiled value-and-grad needs a small fraction of the unblocked
    one's temporary memory at about its time (docs/primitives.md); a call that is not
    differentiated computes the loss alone. Also ``funcgrad.losses.linear_softmax_cross_entropy``.

    Args:
      h: features ``(..., d)``, tokens leading (``(batch, time, d)`` is fine).
      w: the head's weights ``(d, vocabulary)``.
      labels: integer classes, shape ``h.shape[:-1]``.
      where: boolean mask of ``labels``' shape: the tokens that count (padding is False).
      reduction: ``"mean"`` over the counted tokens (default; 0 when none counts) or
        ``"sum"``. There is no ``"none"``: per-token losses would need the whole logits.
      block_size: tokens per block; a block holds ``block_size × vocabulary`` logits.

    Returns:
      A scalar in the inputs' dtype; logits and softmax are computed in float32 at least
      (bfloat16 inputs), the gradients are returned in the inputs' dtypes.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import losses
      >>> h = jax.random.normal(jax.random.key(0), (2, 5, 8))
      >>> w = jax.random.normal(jax.random.key(1), (8, 50))
      >>> labels = jnp.arange(10).reshape(2, 5)
      >>> blocked = losses.linear_softmax_cross_entropy(h, w, labels, block_size=4)
      >>> bool(jnp.allclose(blocked, losses.softmax_cross_entropy(h @ w, labels)))
      True
    """
    h, w, labels = jnp.asarray(h), jnp.asarray(w), jnp.asarray(labels)
    float_input(NAME, h)
    float_input(NAME, w)
    if w.ndim != 2 or h.ndim == 0 or h.shape[-1] != w.shape[0]:
        raise ShapeError(
            f"{NAME}: h (..., d) and w (d, vocabulary) must share d; got h of shape {h.shape} "
            f"and w of shape {w.shape}"
        )
    if labels.shape != h.shape[:-1]:
        raise ShapeError(
            f"{NAME}: labels must have shape {h.shape[:-1]} (h's shape without d); got "
            f"{labels.shape}"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise DTypeError(f"{NAME}: labels must be integer classes; got dtype {labels.dtype}")
    counted = jnp.ones(labels.shape, bool) if where is None else jnp.asarray(where)
    if counted.dtype != jnp.bool_:
        raise DTypeError(f"{NAME}: where must be a boolean mask; got dtype {counted.dtype}")
    if counted.shape != labels.shape:
        raise ShapeError(
            f"{NAME}: where must have the labels' shape {labels.shape}; got {counted.shape}"
        )
    if reduction not in ("mean", "sum"):
        raise ConfigError(
            f"{NAME}: reduction must be 'mean' or 'sum'; got {reduction!r} (per-token losses "
            "would need the logits this function never holds)"
        )
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ConfigError(f"{NAME}: block_size must be a positive integer; got {block_size!r}")
    if labels.size == 0:
        raise ShapeError(
            f"{NAME}: there are no tokens (h has shape {h.shape}); the loss is undefined"
        )
    d = h.shape[-1]
    return _linear_softmax_cross_entropy.bind(
        h.reshape(-1, d),
        w,
        labels.reshape(-1),
        counted.reshape(-1),
        block_size=block_size,
        reduction=reduction,
    )
