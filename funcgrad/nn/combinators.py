"""Combinators that build models from layers: serial, parallel, residual, shared, repeat, remat.

Children's parameters live under readable keys (``dense_0``, ``conv_1`` or a given ``name``).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp

from funcgrad.errors import ConfigError, DTypeError, InputTypeError, ParamsError, ShapeError
from funcgrad.nn.layer import (
    Array,
    Context,
    Layer,
    Params,
    Path,
    SlotRequest,
    State,
    Wrapper,
    apply_child,
    path_key,
)
from funcgrad.nn.loops import loop_body
from funcgrad.paths import describe


def _keys(layers: tuple[Layer, ...], where: str) -> tuple[str, ...]:
    keys: list[str] = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            hint = "; wrap a function with nn.elementwise(fn)" if callable(layer) else ""
            raise InputTypeError(
                f"{where}: argument {i} is {type(layer).__name__}, not a funcgrad Layer{hint}"
            )
        # A shared layer's parameters live at the top of the tree, not under this key.
        key = (
            f"shared_{i}" if layer.shared_name() is not None else layer.name or f"{layer.kind}_{i}"
        )
        if key in keys:
            raise ConfigError(f"{where}: two children are named '{key}'; names must be unique")
        keys.append(key)
    return tuple(keys)


def _check_keys(tree: Any, keys: tuple[str, ...], path: Path, what: str, layer: str) -> None:
    if not isinstance(tree, dict):
        raise ParamsError(
            f"{layer} at {describe(path)}: {what} must be a dict; got {type(tree).__name__}"
        )
    extra = sorted(set(tree) - set(keys))
    if extra:
        raise ParamsError(
            f"{layer} at {describe(path)}: unexpected {what} key(s) {extra}; its children are "
            f"{list(keys)}"
        )


def _same_spec(a: Any, b: Any) -> bool:
    return jax.tree.map(lambda s: (s.shape, s.dtype), a) == jax.tree.map(
        lambda s: (s.shape, s.dtype), b
    )


class _Group(Layer):
    """Children with keyed parameters; subclasses say how data flows between them."""

    layers: tuple[Layer, ...]

    def children(self) -> tuple[Layer, ...]:
        return self.layers

    @property
    def keys(self) -> tuple[str, ...]:
        return _keys(self.layers, type(self).__name__)

    def _init_children(
        self, key: Array, xs: list[Any], path: Path, shared: dict[str, Any], chain: bool
    ) -> tuple[Params, State, list[Any]]:
        params, state, outs = {}, {}, []
        x = xs[0]
        for k, layer in zip(self.keys, self.layers, strict=True):
            p, s, y = layer._init(key, x if chain else xs[0], (*path, k), shared)
            if p:
                params[k] = p
            if s:
                state[k] = s
            outs.append(y)
            x = y
        return params, state, outs

    def _init_slot(self, request: SlotRequest, params: Params | None, path: Path) -> State:
        slots = {
            k: layer._init_slot(request, None if params is None else params.get(k, {}), (*path, k))
            for k, layer in zip(self.keys, self.layers, strict=True)
        }
        return {k: s for k, s in slots.items() if s}

    def _child_inputs(
        self, params: Params, state: State, path: Path
    ) -> list[tuple[str, Layer, Params, State]]:
        layer = type(self).__name__
        _check_keys(params, self.keys, path, "parameter", layer)
        _check_keys(state, self.keys, path, "state", layer)
        return [
            (k, c, params.get(k, {}), state.get(k, {}))
            for k, c in zip(self.keys, self.layers, strict=True)
        ]


@dataclasses.dataclass(frozen=True)
class Serial(_Group):
    """Layers applied one after another (Torch's ``nn.Sequential``); made by `serial`."""

    layers: tuple[Layer, ...]
    name: str | None = None
    kind = "serial"

    def _init(
        self, key: Array, x: Any, path: Path, shared: dict[str, Any]
    ) -> tuple[Params, State, Any]:
        params, state, outs = self._init_children(key, [x], path, shared, chain=True)
        return params, state, outs[-1] if outs else x

    def _apply(self, params: Params, state: State, x: Any, ctx: Context, path: Path) -> Any:
        new_state = {}
        for k, layer, p, s in self._child_inputs(params, state, path):
            x, s = apply_child(layer, p, s, x, ctx, (*path, k))
            if s:
                new_state[k] = s
        return x, new_state


def serial(
    *layers: Layer, name: str | None = None, remat: bool | Callable[..., Any] = False
) -> Serial:
    """Compose layers in order; parameters are keyed ``{kind}_{position}`` or by each layer's name.

    ``remat=`` is deprecated: wrap the layers that should be rematerialised segments in
    `remat` (``serial(*(nn.remat(l) for l in layers))`` is what ``remat=True`` did).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> model = nn.serial(nn.Dense(8), nn.relu, nn.Dense(2))
      >>> params = model.init(jax.random.key(0), jnp.zeros((1, 4)))
      >>> sorted(params)
      ['dense_0', 'dense_2']
    """
    _keys(layers, "serial")
    _check_remat(remat, "serial")
    if remat is not False:
        _warn_remat("serial", "serial(*(nn.remat(layer) for layer in layers))")
        policy = None if remat is True else remat
        layers = tuple(
            layer if isinstance(layer, Remat) else Remat(layer, policy) for layer in layers
        )
    return Serial(tuple(layers), name)


@dataclasses.dataclass(frozen=True)
class Parallel(_Group):
    """The same input fanned out to each branch, the outputs summed or concatenated; made by `parallel`."""

    layers: tuple[Layer, ...]
    combine: str = "sum"
    name: str | None = None
    kind = "parallel"

    def _fan_in(self, ys: list[Any]) -> Any:
        if self.combine == "concat":
            return jnp.concatenate(ys, axis=-1)
        total = ys[0]
        for y in ys[1:]:
            total = total + y
        return total

    def _init(
        self, key: Array, x: Any, path: Path, shared: dict[str, Any]
    ) -> tuple[Params, State, Any]:
        params, state, outs = self._init_children(key, [x], path, shared, chain=False)
        shapes = [tuple(o.shape) for o in outs]
        if self.combine == "sum" and len(set(shapes)) > 1:
            raise ShapeError(
                f"parallel at {describe(path)}: cannot sum branch outputs of shapes {shapes}"
            )
        if self.combine == "concat" and len({s[:-1] for s in shapes}) > 1:
            raise ShapeError(
                f"parallel at {describe(path)}: cannot concatenate branch outputs of shapes {shapes} "
                "on the last axis"
            )
        return params, state, jax.eval_shape(self._fan_in, outs)

    def _apply(self, params: Params, state: State, x: Any, ctx: Context, path: Path) -> Any:
        ys, new_state = [], {}
        for k, layer, p, s in self._child_inputs(params, state, path):
            y, s = apply_child(layer, p, s, x, ctx, (*path, k))
            ys.append(y)
            if s:
                new_state[k] = s
        return self._fan_in(ys), new_state


def parallel(
    *layers: Layer, combine: Literal["sum", "concat"] = "sum", name: str | None = None
) -> Parallel:
    """Fan the input out to every branch; fan in by ``"sum"`` or ``"concat"`` (last axis).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> block = nn.parallel(nn.Dense(3), nn.Dense(5), combine="concat")
      >>> x = jnp.zeros((2, 4))
      >>> block.apply(block.init(jax.random.key(0), x), x).shape
      (2, 8)
    """
    if combine not in ("sum", "concat"):
        raise ConfigError(f"parallel: combine must be 'sum' or 'concat'; got {combine!r}")
    _keys(layers, "parallel")
    return Parallel(tuple(layers), combine, name)


@dataclasses.dataclass(frozen=True)
class Residual(Serial):
    """``x + serial(*layers)(x)``, added in the branch's (compute) dtype; made by `residual`."""

    kind = "residual"

    def _init(
        self, key: Array, x: Any, path: Path, shared: dict[str, Any]
    ) -> tuple[Params, State, Any]:
        params, state, y = super()._init(key, x, path, shared)
        if not hasattr(y, "shape") or tuple(x.shape) != tuple(y.shape):
            got = f"{tuple(y.shape)} {y.dtype}" if hasattr(y, "shape") else type(y).__name__
            raise ShapeError(
                f"residual at {describe(path)}: the branch maps {tuple(x.shape)} {x.dtype} to "
                f"{got}; a residual connection needs the shapes equal"
            )
        if x.dtype != y.dtype and not (
            jnp.issubdtype(x.dtype, jnp.floating) and jnp.issubdtype(y.dtype, jnp.floating)
        ):
            raise DTypeError(
                f"residual at {describe(path)}: the branch maps dtype {x.dtype} to {y.dtype}; "
                "a residual connection adds them, so both must be floating point or equal"
            )
        return params, state, jax.ShapeDtypeStruct(x.shape, y.dtype)

    def _apply(self, params: Params, state: State, x: Any, ctx: Context, path: Path) -> Any:
        y, new_state = super()._apply(params, state, x, ctx, path)
        # The skip joins the branch in the branch's dtype: a bfloat16 branch on a float32
        # input gives a bfloat16 sum (the compute dtype), as under mixed_precision.
        return jnp.asarray(x).astype(y.dtype) + y, new_state


def residual(*layers: Layer, name: str | None = None) -> Residual:
    """A skip connection around ``serial(*layers)``: ``y = x + f(x)``.

    The sum is taken in the branch's output dtype (its compute dtype): with
    ``Dense(n, dtype=jnp.bfloat16)`` inside, a float32 ``x`` is cast to bfloat16 and added.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> block = nn.residual(nn.LayerNorm(), nn.Dense(4))
      >>> x = jnp.ones((2, 4))
      >>> block.apply(block.init(jax.random.key(0), x), x).shape
      (2, 4)
    """
    _keys(layers, "residual")
    return Residual(tuple(layers), name)


@dataclasses.dataclass(frozen=True)
class Shared(Layer):
    """One parameter subtree, stored once at the top of the model under ``name``, used wherever this layer is."""

    layer: Layer
    name: str
    kind = "shared"

    def children(self) -> tuple[Layer, ...]:
        return (self.layer,)

    def shared_name(self) -> str | None:
        return self.name

    def _init(
        self, key: Array, x: Any, path: Path, shared: dict[str, Any]
    ) -> tuple[Params, State, Any]:
        params, state, y = self.layer._init(key, x, (self.name,), {})
        if state:
            raise ConfigError(
                f"shared layer '{self.name}' has state (batch norm); sharing it is not supported"
            )
        if self.name not in shared:
            shared[self.name] = params
        return {}, {}, y

    def _init_slot(self, request: SlotRequest, params: Params | None, path: Path) -> State:
        # Each place of use has its own slot (under its own key), the parameters are shared.
        return self.layer._init_slot(request, request.shared.get(self.name), (self.name,))

    def _apply(self, params: Params, state: State, x: Any, ctx: Context, path: Path) -> Any:
        if params:
            raise ParamsError(
                f"shared layer '{self.name}' at {describe(path)} keeps its parameters at the top "
                f"of the tree, params['{self.name}']; got parameters at its place of use"
            )
        # The state is {} or this place's cache.
        return apply_child(self.layer, ctx.shared[self.name], state, x, ctx, (self.name,))


def shared(layer: Layer, name: str) -> Shared:
    """Use one set of parameters at several places; their gradients add up (seeds, example 7).

    The parameters live once, at the top of the model's tree, under ``name``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> tied = nn.shared(nn.Dense(4), name="tied")
      >>> model = nn.serial(tied, nn.relu, tied)
      >>> sorted(model.init(jax.random.key(0), jnp.zeros((1, 4))))
      ['tied']
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"shared: name must be a non-empty string; got {name!r}")
    return Shared(layer, name)


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
    _check_remat(remat, "repeat")
    if remat is not False:
        _warn_remat("repeat", "repeat(nn.remat(layer), n)")
        layer = Remat(layer, None if remat is True else remat)
    return Repeat(layer, n, name, unroll)


def _warn_remat(where: str, instead: str) -> None:
    warnings.warn(
        f"{where}(..., remat=) is deprecated: rematerialisation is asked for one way, "
        f"nn.remat(layer, policy=None); write {instead}",
        DeprecationWarning,
        stacklevel=3,
    )


def _check_remat(remat: Any, where: str) -> None:
    if not (isinstance(remat, bool) or callable(remat)):
        raise ConfigError(
            f"{where}: remat must be True, False or a jax.checkpoint_policies entry; got {remat!r}"
        )


@dataclasses.dataclass(frozen=True)
class Remat(Wrapper):
    """A layer whose activations are recomputed in the backward pass; made by `remat`."""

    policy: Callable[..., Any] | None = None

    def _apply(self, params: Params, state: State, x: Any, ctx: Context, path: Path) -> Any:
        def run(p: Params, s: State, v: Any, key: Array | None, position: Any) -> Any:
            inner = dataclasses.replace(ctx, key=key, position=position)
            return apply_child(self.layer, p, s, v, inner, path)

        return jax.checkpoint(run, policy=self.policy)(params, state, x, ctx.key, ctx.position)


def remat(layer: Layer, policy: Callable[..., Any] | None = None) -> Remat:
    """Recompute ``layer``'s activations in the backward pass instead of storing them.

    Same parameters, same results, less memory; ``policy`` is a
    `jax.checkpoint_policies` entry. Parameters are those of ``layer`` itself. This is the
    one way to ask for rematerialisation: ``repeat(nn.remat(block), n)`` recomputes each
    copy (only the carry between copies is stored), ``serial(nn.remat(a), nn.remat(b))``
    makes each a segment.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> block = nn.remat(nn.serial(nn.Dense(4), nn.gelu))
      >>> x = jnp.ones((2, 4))
      >>> block.apply(block.init(jax.random.key(0), x), x).shape
      (2, 4)
    """
    return Remat(layer, policy)
