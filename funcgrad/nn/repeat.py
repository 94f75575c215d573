"""`repeat(layer, n)`: n copies with stacked parameters, applied with `jax.lax.scan`.

Compile time does not grow with depth; the parameter tree is the same at any ``unroll``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.extend
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

        if ctx.position is not None and jax.tree.leaves(state):
            return self._decode(params, state, x, ctx, path)
        with loop_body():
            y, new_state = jax.lax.scan(
                body, x, (jnp.arange(self.n), params, state), unroll=self.unroll
            )
        return y, new_state

    def _decode(self, params: Params, state: State, x: Any, ctx: Context, path: Path) -> Any:
        """Decoding: each copy's writes to its slice of the stacked state (a key/value cache)
        land in place in the stacked arrays (see `_in_place`), so no token copies a cache.

        A step over one position, where reading the weights is the work, runs the copies
        unrolled, each one's parameter slice behind `jax.lax.optimization_barrier`: XLA then
        slices the weights once outside a surrounding token loop instead of copying them out
        of the stack at every token. Longer inputs (a prompt's prefill) keep the scan.
        """
        leaves, tree = jax.tree.flatten(state)
        slices = [jax.ShapeDtypeStruct(a.shape[1:], a.dtype) for a in leaves]

        def body(carry: tuple[Any, list[Array]], xs: tuple[Any, Params]) -> Any:
            y, stacked = carry
            i, p = xs
            key = None if ctx.key is None else jax.random.fold_in(ctx.key, i)
            y_tree: list[Any] = []

            def one(p: Params, s: list[Array], y: Any) -> list[Any]:
                y, new = apply_child(
                    self.layer, p, jax.tree.unflatten(tree, s), y,
                    dataclasses.replace(ctx, key=key), path,
                )  # fmt: skip
                y_leaves, y_def = jax.tree.flatten(y)
                y_tree.append(y_def)
                return y_leaves + tree.flatten_up_to(new)  # type: ignore[attr-defined]

            outs = _in_place(jax.make_jaxpr(one)(p, slices, y), stacked, i, p, y)
            y = jax.tree.unflatten(y_tree[0], outs[: len(outs) - len(stacked)])
            return (y, outs[len(outs) - len(stacked) :]), None

        carry = (x, leaves)
        if all(jnp.ndim(a) >= 2 and jnp.shape(a)[1] == 1 for a in jax.tree.leaves(x)):
            for i in range(self.n):
                p = jax.lax.optimization_barrier(jax.tree.map(lambda a, i=i: a[i], params))
                carry, _ = body(carry, (i, p))
        else:
            with loop_body():
                carry, _ = jax.lax.scan(
                    body, carry, (jnp.arange(self.n), params), unroll=self.unroll
                )
        return carry[0], jax.tree.unflatten(tree, carry[1])


_DUS = jax.lax.dynamic_update_slice_p


@dataclasses.dataclass(frozen=True)
class _Slice:
    """Slice ``index`` of the stacked array ``stacked`` (leaf ``leaf`` of the state), not yet read."""

    stacked: Array
    index: Array
    leaf: int


def _in_place(closed: Any, stacked: list[Array], i: Any, params: Params, x: Any) -> list[Any]:
    """Evaluate ``closed`` (one copy's step, ``(params, state slices, x) -> (y, new state)``) on
    slice ``i`` of the ``stacked`` state, writing into the stacked arrays where it writes its slices.

    A `jax.lax.dynamic_update_slice` of a state slice becomes one of the stacked array (at
    ``(i, ...)``), and later reads of that slice read it back from there: XLA updates the
    scan's carried buffer in place, as it updates a serial model's own cache, instead of
    copying slice ``i`` out, changing it and copying it back (every layer, every token).
    Any other new state is written back whole. The values are exactly those of ``closed``.
    """
    jaxpr = closed.jaxpr
    env: dict[Any, Any] = {}
    read_slices: dict[int, Array] = {}

    def read(v: Any) -> Any:
        if isinstance(v, jax.extend.core.Literal):
            return v.val
        value = env[v]
        if isinstance(value, _Slice):
            if id(value) not in read_slices:
                read_slices[id(value)] = jax.lax.dynamic_index_in_dim(
                    value.stacked, value.index, keepdims=False
                )
            return read_slices[id(value)]
        return value

    args = jax.tree.leaves(params)
    n_params = len(args)
    invars = jaxpr.invars
    for v, a in zip(jaxpr.constvars, closed.consts, strict=True):
        env[v] = a
    for v, a in zip(invars[:n_params], args, strict=True):
        env[v] = a
    for leaf, (v, a) in enumerate(
        zip(invars[n_params : n_params + len(stacked)], stacked, strict=True)
    ):
        env[v] = _Slice(a, i, leaf)
    for v, a in zip(invars[n_params + len(stacked) :], jax.tree.leaves(x), strict=True):
        env[v] = a
    for eqn in jaxpr.eqns:
        target = env.get(eqn.invars[0]) if eqn.primitive is _DUS else None
        if isinstance(target, _Slice):
            update, *starts = (read(v) for v in eqn.invars[1:])
            starts = [jnp.asarray(s, jnp.int32) for s in starts]
            written = jax.lax.dynamic_update_slice(
                target.stacked, update[None], [jnp.asarray(i, jnp.int32), *starts]
            )
            env[eqn.outvars[0]] = _Slice(written, i, target.leaf)
            continue
        with eqn.ctx.manager:
            ans = eqn.primitive.bind(
                *(read(v) for v in eqn.invars), **eqn.primitive.get_bind_params(eqn.params)
            )
        for v, a in zip(eqn.outvars, ans if eqn.primitive.multiple_results else [ans], strict=True):
            env[v] = a
    n_state = len(stacked)
    outs = list(jaxpr.outvars)
    result = [read(v) for v in outs[: len(outs) - n_state]]
    for leaf, v in enumerate(outs[len(outs) - n_state :]):
        value = None if isinstance(v, jax.extend.core.Literal) else env[v]
        if isinstance(value, _Slice) and value.leaf == leaf:
            result.append(value.stacked)
        else:
            result.append(jax.lax.dynamic_update_index_in_dim(stacked[leaf], read(v), i, 0))
    return result


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

    Decoding (``apply(params, x, state=caches, position=p)``) writes each copy's cache
    slice in place in the stacked caches, and a one-position step runs the copies unrolled
    so a token loop reads the weights where they lie (a prompt's prefill stays scanned). On
    XLA:CPU that decodes at 0.65-0.85x the tokens/s of the same blocks in a `serial`, whose
    caches are separate buffers (docs/performance.md says why); prefer `serial` where
    decoding speed on CPU matters more than compile time.

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
