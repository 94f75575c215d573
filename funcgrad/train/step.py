"""The jitted training step: value_and_grad of a loss, then an optax update, in one XLA program.

Nothing of funcgrad runs per step: the step is a plain `jax.jit` function with donated buffers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from funcgrad.errors import ShapeError

Metrics = dict[str, Any]
Step = Callable[..., tuple[Any, Any, Metrics]]


def _scalar_loss(value: Any) -> Any:
    if not hasattr(value, "shape") or jnp.shape(value) != ():
        raise ShapeError(
            f"make_step: loss_fn must return a scalar loss (or (loss, aux) with has_aux=True); "
            f"got {type(value).__name__} of shape {jnp.shape(value)}"
        )
    return value


def make_step(
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    *,
    has_aux: bool = False,
    donate: bool = True,
) -> Step:
    """A jitted ``step(params, opt_state, batch, key=None) -> (params, opt_state, metrics)``.

    ``loss_fn(params, batch)`` (or ``loss_fn(params, batch, key)`` when the
    step is called with a key) returns a scalar, or ``(scalar, aux_dict)`` with
    ``has_aux=True``. ``metrics`` is ``{"loss": loss, **aux}``. With
    ``donate=True`` the parameter and optimizer buffers are donated, so XLA
    updates them in place: do not reuse the arrays you passed in.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> import funcgrad as fg
      >>> def loss_fn(w, batch):
      ...     x, y = batch
      ...     return jnp.mean((x * w - y) ** 2)
      >>> opt = optax.sgd(0.1)
      >>> step = fg.train.make_step(loss_fn, opt)
      >>> w = jnp.array(0.0)
      >>> state = opt.init(w)
      >>> for _ in range(50):
      ...     w, state, metrics = step(w, state, (jnp.ones(4), 2 * jnp.ones(4)))
      >>> round(float(w), 3)
      2.0
    """

    def step(params: Any, opt_state: Any, batch: Any, key: Any = None) -> tuple[Any, Any, Metrics]:
        args = (batch,) if key is None else (batch, key)

        def objective(p: Any) -> Any:
            out = loss_fn(p, *args)
            if has_aux:
                loss, aux = out
                return _scalar_loss(loss), aux
            return _scalar_loss(out)

        if has_aux:
            (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
        else:
            loss, grads = jax.value_and_grad(objective)(params)
            aux = {}
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": loss, **aux}

    return jax.jit(step, donate_argnums=(0, 1) if donate else ())
