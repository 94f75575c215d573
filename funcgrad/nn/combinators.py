"""Combinators that route data between layers: serial, parallel, residual (shared, repeat, remat re-exported).

Children's parameters live under readable keys (``dense_0``, ``conv_1`` or a given ``name``).
"""

from __future__ import annotations

import dataclasses
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
    apply_child,
)
from funcgrad.nn.remat import Remat, check_remat, remat, warn_remat
from funcgrad.nn.repeat import Repeat, repeat
from funcgrad.nn.sharing import Shared, shared
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
    check_remat(remat, "serial")
    if remat is not False:
        warn_remat("serial", "serial(*(nn.remat(layer) for layer in layers))")
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


__all__ = [
    "Parallel",
    "Remat",
    "Repeat",
    "Residual",
    "Serial",
    "Shared",
    "parallel",
    "remat",
    "repeat",
    "residual",
    "serial",
    "shared",
]
