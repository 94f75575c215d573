"""Per-example gradients (vmap of grad over the batch axis), optionally clipped per example.

For DP-SGD, feed them to `optax.contrib.differentially_private_aggregate`, which clips, sums and adds noise.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from funcgrad.errors import ConfigError
from funcgrad.train.checkpoint.leaves import is_key
from funcgrad.train.step import call_loss, key_style


def global_norms(grads: Any) -> jax.Array:
    """The L2 norm of each example's whole gradient, shape ``(batch,)``."""
    return jax.vmap(optax.tree.norm)(grads)


def per_example_grads(
    loss_fn: Callable[..., Any], *, clip_norm: float | None = None, with_key: bool | None = None
) -> Callable[..., Any]:
    """``grads(params, batch, *args, key=None)``: the gradient of ``loss_fn`` for each example, stacked.

    ``loss_fn(params, batch, *args)`` is the ordinary batched loss; each example is passed
    to it as a batch of one, so the same function serves both. Every leaf of the result
    has a leading batch axis. With ``clip_norm``, each example's gradient is scaled so
    that its global L2 norm is at most ``clip_norm`` (the DP-SGD clipping).

    Randomness is per example, as DP-SGD's analysis assumes: with ``with_key=True`` the
    ``key=`` of the call reaches the loss as ``key=``, as in `make_step`
    (``loss_fn(params, batch, *args, key=key)``), and it and every typed PRNG key among
    ``args`` (from ``jax.random.key``) reach example ``i`` as ``jax.random.fold_in(key, i)``,
    so each example draws its own dropout mask. (A ``key=`` given without ``with_key`` is
    appended positionally, for now, with a `DeprecationWarning`.)

    Example:
      >>> import jax, jax.numpy as jnp, funcgrad as fg
      >>> loss = lambda w, b: jnp.mean((b[0] * w - b[1]) ** 2)
      >>> grads = fg.train.per_example_grads(loss)(jnp.array(1.0), (jnp.array([1.0, 2.0]), jnp.zeros(2)))
      >>> grads.tolist()
      [2.0, 8.0]
      >>> noisy = lambda w, b, *, key: jnp.mean(b * w * jax.random.bernoulli(key, 0.5, b.shape))
      >>> fg.train.per_example_grads(noisy, with_key=True)(1.0, jnp.ones(8), key=jax.random.key(0)).shape
      (8,)
    """

    style = key_style(loss_fn, True, what="per_example_grads") if with_key else None

    def one(params: Any, example: Any, index: Any, key: Any, *args: Any) -> Any:
        batch = jax.tree.map(lambda a: jnp.expand_dims(a, 0), example)
        args = tuple(jax.random.fold_in(a, index) if is_key(a) else a for a in args)
        if key is None:
            return jax.grad(loss_fn)(params, batch, *args)
        key = jax.random.fold_in(key, index)
        # Not told (style None): the deprecated form, the key appended after the arguments.
        how = style or "positional"
        return jax.grad(lambda p: call_loss(loss_fn, how, (p, batch, *args), key))(params)

    def grads(params: Any, batch: Any, *args: Any, key: Any = None) -> Any:
        if key is not None and style is None:
            if with_key is False:
                raise ConfigError(
                    "per_example_grads: a key= was given, but the loss was declared without "
                    "one (with_key=False)"
                )
            warnings.warn(
                "per_example_grads: appending key= to the loss's arguments without being told "
                "is deprecated; pass per_example_grads(loss_fn, with_key=True) and declare "
                "def loss_fn(params, batch, *, key)",
                DeprecationWarning,
                stacklevel=2,
            )
        n = jax.tree.leaves(batch)[0].shape[0]
        in_axes = (None, 0, 0, None) + (None,) * len(args)
        result = jax.vmap(one, in_axes=in_axes)(params, batch, jnp.arange(n), key, *args)
        if clip_norm is None:
            return result
        norms = global_norms(result)
        scale = jnp.minimum(1.0, clip_norm / jnp.maximum(norms, 1e-30))
        return jax.tree.map(
            lambda g: g * scale.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype), result
        )

    return grads
