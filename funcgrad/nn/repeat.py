"""`repeat(layer, n)`: n copies with stacked parameters, applied with `jax.lax.scan`.

Compile time does not grow with depth; the parameter tree is the same at any ``unroll``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from funcgrad.errors import ConfigError, ParamsError, ShapeError
from funcgrad.nn.layer import (
    Array,
    Context,
    Layer,
    Params,
    Path,
    SlotRequest,
    State,
    apply_child,
    path_key,
)
from funcgrad.nn.loops import loop_body
from funcgrad.nn.remat import Remat, check_remat, warn_remat
from funcgrad.paths import describe


def _same_spec(a: Any, b: Any) -> bool:
    return jax.tree.map(lambda s: (s.shape, s.dtype), a) == jax.tree.map(
        lambda s: (s.shape, s.dtype), b
    )


@dataclasses.dataclass(frozen=True)
class Repeat(Layer):
    """``n`` copies of a layer with stacked parameters, applied with `jax.lax.scan`; made by `repeat`."""

    layer: Layer
    n: int
    name: str | None = None
    unroll: int | bool = 1
    kind = "repeat"

    def children(self) -> tuple[Layer, ...]:
        return (self.layer,)

    def _init(
        self, key: Array, x: Any, path: Path, shared: dict[str, Any]
    ) -> tuple[Params, State, Any]:
        _, _, y = self.layer._init(key, x, path, shared)
        if not _same_spec(x, y):
            raise ShapeError(
                f"repeat at {describe(path)}: the repeated layer maps {tuple(x.shape)} {x.dtype} "
                f"to {tuple(y.shape)} {y.dtype}; scanning needs its output shaped and typed like "
                "its input (cast the input to the compute dtype, or use mixed_precision)"
            )
        base = path_key(key, path)

        def one(i: Array) -> tuple[Params, State]:
            p, s, _ = self.layer._init(jax.random.fold_in(base, i), x, path, shared)
            return p, s

        params, state = jax.vmap(one)(jnp.arange(self.n))
        return params, state, x

    def _init_slot(self, request: SlotRequest, params: Params | None, path: Path) -> State:
        one = None if params is None else jax.tree.map(lambda a: a[0], params)
        slot = self.layer._init_slot(request, one, path)
        return jax.tree.map(lambda a: jnp.zeros((self.n, *a.shape), a.dtype), slot)

    def _apply(self, params: Params, state: State, x: Any, ctx: Context, path: Path) -> Any:
        leaves = jax.tree.leaves((params, state))
        bad = [jnp.shape(v) for v in leaves if jnp.ndim(v) == 0 or jnp.shape(v)[0] != self.n]
        if bad:
            raise ParamsError(
                f"repeat at {describe(path)}: every parameter needs a leading axis of size "
                f"{self.n} (one slice per copy); got shapes {bad[:3]}"
            )

        def body(carry: Any, xs: tuple[Array, Params, State]) -> tuple[Any, State]:
            i, p, s = xs
            key = None if ctx.key is None else jax.random.fold_in(ctx.key, i)
            y, s = apply_child(self.layer, p, s, carry, dataclasses.replace(ctx, key=key), path)
            return y, s

        with loop_body():
            y, new_state = jax.lax.scan(
                body, x, (jnp.arange(self.n), params, state), unroll=self.unroll
            )
        return y, new_state


def repeat(
    layer: Layer,
    n: int,
    *,
    remat: bool | Callable[..., Any] = False,
    unroll: int | bool = 1,
    name: str | None = None,
) -> Repeat:
    """``n`` copies of ``layer`` in sequence, parameters stacked on a new leading axis.

    Applied with `jax.lax.scan`, so compile time does not grow with ``n``. To recompute
    each copy's activations in the backward pass (only the carry between copies is
    stored), repeat a rematerialised layer: ``repeat(nn.remat(layer), n)``, with
    ``nn.remat(layer, policy)`` for a `jax.checkpoint_policies` entry; ``remat=`` here is
    the deprecated spelling of that. The layer's output must have its input's shape and dtype.

    ``unroll`` is passed to `jax.lax.scan`: ``unroll=k`` puts k copies in each loop
    iteration (``True``: all n, a straight-line program like `serial`), trading compile
    time for speed where a backend runs loops slowly (XLA:GPU); the parameter tree is the
    same at any unroll, so checkpoints and optimizer state carry over. See
    docs/performance.md for when to choose `serial`, ``repeat`` or ``repeat(unroll=)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> deep = nn.repeat(nn.serial(nn.Dense(16), nn.tanh), 8)
      >>> params = deep.init(jax.random.key(0), jnp.zeros((1, 16)))
      >>> params["dense_0"]["w"].shape
      (8, 16, 16)
      >>> fast = nn.repeat(nn.serial(nn.Dense(16), nn.tanh), 8, unroll=2)
      >>> jax.tree.map(jnp.shape, fast.init(jax.random.key(0), jnp.zeros((1, 16)))) == (
      ...     jax.tree.map(jnp.shape, params))
      True
    """
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"repeat: n must be a positive int; got {n!r}")
    if not (isinstance(unroll, bool) or (isinstance(unroll, int) and unroll >= 1)):
        raise ConfigError(f"repeat: unroll must be a positive int or a bool; got {unroll!r}")
    check_remat(remat, "repeat")
    if remat is not False:
        warn_remat("repeat", "repeat(nn.remat(layer), n)")
        layer = Remat(layer, None if remat is True else remat)
    return Repeat(layer, n, name, unroll)
