"""Per-example gradients (vmap of grad over the batch axis), optionally clipped per example.

For DP-SGD, feed them to `optax.contrib.differentially_private_aggregate`, which clips, sums and adds noise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax


def global_norms(grads: Any) -> jax.Array:
    """The L2 norm of each example's whole gradient, shape ``(batch,)``."""
    return jax.vmap(optax.tree.norm)(grads)


def per_example_grads(
    loss_fn: Callable[..., Any], *, clip_norm: float | None = None
) -> Callable[..., Any]:
    """``grads(params, batch, *args)``: the gradient of ``loss_fn`` for each example, stacked.

    ``loss_fn(params, batch, *args)`` is the ordinary batched loss; each example is passed
    to it as a batch of one, so the same function serves both. Every leaf of the result
    has a leading batch axis. With ``clip_norm``, each example's gradient is scaled so
    that its global L2 norm is at most ``clip_norm`` (the DP-SGD clipping).

    Example:
      >>> import jax.numpy as jnp, funcgrad as fg
      >>> loss = lambda w, b: jnp.mean((b[0] * w - b[1]) ** 2)
      >>> grads = fg.train.per_example_grads(loss)(jnp.array(1.0), (jnp.array([1.0, 2.0]), jnp.zeros(2)))
      >>> grads.tolist()
      [2.0, 8.0]
    """

    def one(params: Any, example: Any, *args: Any) -> Any:
        batch = jax.tree.map(lambda a: jnp.expand_dims(a, 0), example)
        return jax.grad(loss_fn)(params, batch, *args)

    def grads(params: Any, batch: Any, *args: Any) -> Any:
        result = jax.vmap(one, in_axes=(None, 0) + (None,) * len(args))(params, batch, *args)
        if clip_norm is None:
            return result
        norms = global_norms(result)
        scale = jnp.minimum(1.0, clip_norm / jnp.maximum(norms, 1e-30))
        return jax.tree.map(
            lambda g: g * scale.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype), result
        )

    return grads
