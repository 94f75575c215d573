"""Recurrent cells (LSTMCell, GRUCell) and the layers that run them over time: recurrent, bidirectional.

A cell maps ``(carry, x_t)`` to ``(carry, y_t)``; `recurrent` scans it over the time axis of ``(batch, time, features)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from funcgrad.errors import ConfigError, DTypeError, InputTypeError, ParamsError, ShapeError
from funcgrad.nn.layer import (
    Array,
    Context,
    Initializer,
    Layer,
    ParamLayer,
    Params,
    ParamSpec,
    Path,
    Spec,
    State,
    apply_child,
    check_params,
    compute_dtype,
    path_str,
    require_float,
)
from funcgrad.nn.loops import loop_body

Carry = Any


@dataclasses.dataclass(frozen=True)
class _Cell(ParamLayer):
    """What LSTMCell and GRUCell share: the parameters ``wi``, ``wh``, ``bi``, ``bh`` and the checks.

    ``wi`` is ``(in, gates * hidden)``, ``wh`` is ``(hidden, gates * hidden)``, ``bi`` and ``bh``
    are ``(gates * hidden,)``, gates side by side in PyTorch's order.
    """

    hidden: int
    wi_init: Initializer = jax.nn.initializers.lecun_normal()
    wh_init: Initializer = jax.nn.initializers.orthogonal()
    b_init: Initializer = jax.nn.initializers.zeros
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    name: str | None = None
    gates: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if not isinstance(self.hidden, int) or self.hidden < 1:
            raise ConfigError(
                f"{type(self).__name__}: hidden must be a positive int; got {self.hidden!r}"
            )

    def initial_carry(self, batch: int | tuple[int, ...], dtype: Any = jnp.float32) -> Carry:
        """The zero carry for ``batch`` examples (an int or a batch shape)."""
        raise NotImplementedError

    def _split(self, x: Any) -> tuple[Carry | None, Any]:
        """``(carry, x_t)`` or ``x_t`` alone (the zero carry) as ``(carry or None, x_t)``."""
        if isinstance(x, (tuple, list)):
            if len(x) != 2:
                raise InputTypeError(
                    f"{type(self).__name__}: expected (carry, x_t) or x_t; got a tuple of {len(x)}"
                )
            return x[0], x[1]
        return None, x

    def check_input(self, x: Any, path: Path) -> None:
        carry, xt = self._split(x)
        layer = type(self).__name__
        require_float(xt, path, layer)
        if xt.ndim < 1:
            raise ShapeError(
                f"{layer} at {path_str(path)}: expected x_t of shape (..., features); got a scalar"
            )
        if carry is not None:
            shape = (*xt.shape[:-1], self.hidden)
            expected = jax.tree.map(lambda _: shape, self.initial_carry(1))
            got = jax.tree.map(lambda c: tuple(jnp.shape(c)), carry)
            if got != expected:
                raise ShapeError(
                    f"{layer} at {path_str(path)}: expected a carry like {expected} for x_t "
                    f"of shape {tuple(xt.shape)}; got {got}"
                )

    def param_specs(self, x: Any, path: Path) -> dict[str, ParamSpec]:
        n, h = self.gates * self.hidden, self.hidden
        fan_in = self._split(x)[1].shape[-1]
        return {
            "wi": ParamSpec((fan_in, n), self.param_dtype, self.wi_init),
            "wh": ParamSpec((h, n), self.param_dtype, self.wh_init),
            "bi": ParamSpec((n,), self.param_dtype, self.b_init),
            "bh": ParamSpec((n,), self.param_dtype, self.b_init),
        }

    def _apply(self, params: Params, state: State, x: Any, ctx: Context, path: Path) -> Any:
        x = jax.tree.map(jnp.asarray, x)
        self.check_input(x, path)
        carry, xt = self._split(x)
        check_params(params, self.param_specs(x, path), path, type(self).__name__, xt.shape)
        dtype = compute_dtype(self.dtype, xt, *params.values())
        if carry is None:
            carry = self.initial_carry(xt.shape[:-1], dtype)
        with jax.named_scope("/".join(path) or self.kind):
            carry = jax.tree.map(lambda c: c.astype(dtype), carry)
            return self.step(params, carry, xt.astype(dtype)), state

    def _projections(self, params: Params, h: Array, xt: Array) -> tuple[Array, Array]:
        """``x_t @ wi + bi`` and ``h @ wh + bh``, each ``(..., gates * hidden)``."""
        p = {k: v.astype(xt.dtype) for k, v in params.items()}
        xi = jnp.matmul(xt, p["wi"], precision=self.precision) + p["bi"]
        hh = jnp.matmul(h, p["wh"], precision=self.precision) + p["bh"]
        return xi, hh

    def step(self, params: Params, carry: Carry, xt: Array) -> tuple[Carry, Array]:
        """One time step: ``(carry, x_t) -> (carry, y_t)``, all in ``x_t``'s dtype."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class LSTMCell(_Cell):
    """A long short-term memory cell with PyTorch's equations and gate order (i, f, g, o).

    With ``xi = x_t @ wi + bi`` and ``hh = h @ wh + bh`` split into four ``hidden``-wide
    blocks, ``i, f, o = σ(xi + hh)`` blocks 0, 1, 3, ``g = tanh(xi + hh)`` block 2;
    ``c' = f * c + i * g``, ``h' = o * tanh(c')``. The carry is ``(h, c)``, each
    ``(batch, hidden)``; the output ``y_t`` is ``h'``.

    From ``torch.nn.LSTM`` (layer ``k``): ``wi = weight_ih_lk.T``, ``wh = weight_hh_lk.T``,
    ``bi = bias_ih_lk``, ``bh = bias_hh_lk``; the ``_reverse`` tensors are the backward
    direction of `bidirectional`. Initialisation: ``wi`` LeCun normal, ``wh`` orthogonal,
    biases zero (Flax's choice; PyTorch draws all uniformly in ±1/√hidden).

    The input is ``(carry, x_t)``, or ``x_t`` alone to start from the zero carry; ``init``
    needs only ``x_t`` (``(batch, features)``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> cell = nn.LSTMCell(4)
      >>> x_t = jnp.ones((2, 3))
      >>> params = cell.init(jax.random.key(0), x_t)
      >>> (h, c), y = cell.apply(params, (cell.initial_carry(2), x_t))
      >>> h.shape, c.shape, y.shape
      ((2, 4), (2, 4), (2, 4))
    """

    gates: ClassVar[int] = 4
    kind = "lstm_cell"

    def initial_carry(self, batch: int | tuple[int, ...], dtype: Any = jnp.float32) -> Carry:
        shape = (*((batch,) if isinstance(batch, int) else tuple(batch)), self.hidden)
        return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)

    def step(self, params: Params, carry: Carry, xt: Array) -> tuple[Carry, Array]:
        h, c = carry
        xi, hh = self._projections(params, h, xt)
        i, f, g, o = jnp.split(xi + hh, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h


@dataclasses.dataclass(frozen=True)
class GRUCell(_Cell):
    """A gated recurrent unit with PyTorch's equations and gate order (r, z, n).

    With ``xi = x_t @ wi + bi`` and ``hh = h @ wh + bh`` split into three ``hidden``-wide
    blocks: ``r = σ(xi_r + hh_r)``, ``z = σ(xi_z + hh_z)``, ``n = tanh(xi_n + r * hh_n)``
    (the reset gate multiplies the hidden projection *with* its bias, as ``torch.nn.GRU``;
    hence two biases), ``h' = (1 − z) * n + z * h``. The carry is ``h``, ``(batch, hidden)``;
    the output ``y_t`` is ``h'``.

    From ``torch.nn.GRU``: ``wi = weight_ih_lk.T``, ``wh = weight_hh_lk.T``,
    ``bi = bias_ih_lk``, ``bh = bias_hh_lk``. Initialisation as `LSTMCell`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> cell = nn.GRUCell(4)
      >>> params = cell.init(jax.random.key(0), jnp.ones((2, 3)))
      >>> h, y = cell.apply(params, (cell.initial_carry(2), jnp.ones((2, 3))))
      >>> h.shape, bool((h == y).all())
      ((2, 4), True)
    """

    gates: ClassVar[int] = 3
    kind = "gru_cell"

    def initial_carry(self, batch: int | tuple[int, ...], dtype: Any = jnp.float32) -> Carry:
        return jnp.zeros(
            (*((batch,) if isinstance(batch, int) else tuple(batch)), self.hidden), dtype
        )

    def step(self, params: Params, carry: Carry, xt: Array) -> tuple[Carry, Array]:
        h = carry
        xi, hh = self._projections(params, h, xt)
        xr, xz, xn = jnp.split(xi, 3, axis=-1)
        hr, hz, hn = jnp.split(hh, 3, axis=-1)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * hn)
        h = (1 - z) * n + z * h
        return h, h


class _Inputs(NamedTuple):
    """What ``apply(params, x, initial_carry=..., lengths=...)`` hands to ``_apply``."""

    x: Any
    lengths: Any
    carry: Any


def _unpack(x: Any, where: str) -> tuple[Any, Any, Any, bool]:
    """``(x, lengths, initial carry, lengths_in_output)`` from any accepted input form."""
    if isinstance(x, _Inputs):
        return x.x, x.lengths, x.carry, False
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise InputTypeError(
                f"{where}: expected x of shape (batch, time, features) or a pair (x, lengths); "
                f"got a tuple of {len(x)}"
            )
        return x[0], x[1], None, True
    return x, None, None, False


def _check_sequence(x: Any, lengths: Any, where: str) -> None:
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        raise DTypeError(f"{where}: expected a floating-point input; got dtype {x.dtype}")
    if x.ndim != 3:
        raise ShapeError(
            f"{where}: expected input of rank 3 (batch, time, features); got shape {tuple(x.shape)}"
        )
    if lengths is not None:
        if not jnp.issubdtype(lengths.dtype, jnp.integer):
            raise DTypeError(f"{where}: lengths must be integers; got dtype {lengths.dtype}")
        if tuple(lengths.shape) != (x.shape[0],):
            raise ShapeError(
                f"{where}: lengths should have shape (batch,) = ({x.shape[0]},); "
                f"got {tuple(lengths.shape)}"
            )


def _reverse_within(x: Array, lengths: Array | None) -> Array:
    """Reverse each sequence of ``(batch, time, ...)`` within its own length; padding stays put."""
    if lengths is None:
        return jnp.flip(x, axis=1)
    t = jnp.arange(x.shape[1])
    n = jnp.clip(lengths, 0, x.shape[1])[:, None]
    idx = jnp.where(t < n, n - 1 - t, t)
    return jnp.take_along_axis(x, idx.reshape(*idx.shape, *[1] * (x.ndim - 2)), axis=1)


def _scan(
    cell: _Cell,
    params: Params,
    x: Array,
    lengths: Array | None,
    carry: Carry,
    reverse: bool,
    ctx: Context,
    path: Path,
) -> tuple[Carry, Array]:
    """Run ``cell`` over the time axis of ``x``; steps at or past ``lengths`` change nothing."""
    dtype = compute_dtype(cell.dtype, x, *jax.tree.leaves(params))
    if carry is None:
        carry = cell.initial_carry(x.shape[0], dtype)
    else:
        # Checked against a step's input so that a wrong carry is reported before the scan.
        cell.check_input((carry, jax.ShapeDtypeStruct(x.shape[::2], x.dtype)), path)
        carry = jax.tree.map(lambda c: jnp.asarray(c).astype(dtype), carry)
    if reverse:
        x = _reverse_within(x, lengths)

    def body(c: Carry, inputs: tuple[Array, Array]) -> tuple[Carry, Array]:
        t, xt = inputs
        (new, y), _ = apply_child(cell, params, {}, (c, xt), ctx, path)
        if lengths is not None:
            live = (t < lengths)[:, None]
            new = jax.tree.map(lambda a, b: jnp.where(live, a, b), new, c)
            y = jnp.where(live, y, jnp.zeros_like(y))
        return new, y

    with loop_body():
        carry, ys = jax.lax.scan(body, carry, (jnp.arange(x.shape[1]), jnp.swapaxes(x, 0, 1)))
    y = jnp.swapaxes(ys, 0, 1)
    return carry, (_reverse_within(y, lengths) if reverse else y)


def _as_cell(layer: Any, where: str) -> _Cell:
    if isinstance(layer, Recurrent):
        return layer.cell
    if not isinstance(layer, _Cell):
        raise InputTypeError(
            f"{where}: expected a recurrent cell (nn.LSTMCell, nn.GRUCell) or nn.recurrent(cell); "
            f"got {type(layer).__name__}"
        )
    return layer


class _SequenceLayer(Layer):
    """The input forms `Recurrent` and `Bidirectional` share, and ``apply``'s extra keywords."""

    return_carry: bool = False

    def apply(
        self,
        params: Params,
        x: Any,
        *,
        key: Array | None = None,
        state: State | None = None,
        train: bool | None = None,
        cache: Any = None,
        position: Any = None,
        initial_carry: Carry | None = None,
        lengths: Array | None = None,
    ) -> Any:
        """Run over ``x``, ``(batch, time, features)``, or the pair ``(x, lengths)``.

        Args:
          params, key, state, train, cache, position: as `Layer.apply` (a recurrent layer
            keeps no cache; its carry is its state over time).
          initial_carry: the carry to start from (default zeros).
          lengths: ``(batch,)`` integers, each sequence's true length; steps at or past it
            are padding: they change no carry, and their outputs are 0.

        Returns:
          ``y``, ``(batch, time, out)``; ``(y, lengths)`` when the input was the pair;
          ``(carry, that)`` with ``return_carry``.
        """
        if initial_carry is not None or lengths is not None:
            if isinstance(x, (tuple, list)):
                raise InputTypeError(
                    f"{self.kind}: give lengths either in the input (x, lengths) or as "
                    "lengths=..., with initial_carry=..., not both"
                )
            x = _Inputs(x, None if lengths is None else jnp.asarray(lengths), initial_carry)
        return super().apply(
            params, x, key=key, state=state, train=train, cache=cache, position=position
        )

    def _where(self, path: Path) -> str:
        raise NotImplementedError

    def _parts(self, x: Any, path: Path) -> tuple[Any, Any, Any, bool]:
        xs, lengths, carry, paired = _unpack(x, self._where(path))
        xs = jax.tree.map(jnp.asarray, xs) if not isinstance(xs, Spec) else xs
        if lengths is not None and not isinstance(lengths, Spec):
            lengths = jnp.asarray(lengths)
        _check_sequence(xs, lengths, self._where(path))
        return xs, lengths, carry, paired

    def _run(
        self, params: Params, x: Array, lengths: Any, carry: Carry, ctx: Context, path: Path
    ) -> tuple[Carry, Array]:
        raise NotImplementedError

    def _apply(self, params: Params, state: State, x: Any, ctx: Context, path: Path) -> Any:
        xs, lengths, carry, paired = self._parts(x, path)
        carry, y = self._run(params, xs, lengths, carry, ctx, path)
        out = (y, lengths) if paired else y
        return ((carry, out) if self.return_carry else out), state


@dataclasses.dataclass(frozen=True)
class Recurrent(_SequenceLayer):
    """A cell scanned over time; made by `recurrent`. Its parameters are the cell's own."""

    cell: _Cell
    reverse: bool = False
    return_carry: bool = False
    name: str | None = None
    kind = "recurrent"

    def children(self) -> tuple[Layer, ...]:
        return (self.cell,)

    def _where(self, path: Path) -> str:
        return f"recurrent({type(self.cell).__name__}) at {path_str(path)}"

    def _init(
        self, key: Array, x: Any, path: Path, shared: dict[str, Any]
    ) -> tuple[Params, State, Any]:
        xs, *_ = self._parts(x, path)
        step = jax.ShapeDtypeStruct(xs.shape[::2], xs.dtype)
        params, state, _ = self.cell._init(key, step, path, shared)
        return params, state, self._output_spec(params, state, x, path)

    def _run(
        self, params: Params, x: Array, lengths: Any, carry: Carry, ctx: Context, path: Path
    ) -> tuple[Carry, Array]:
        return _scan(self.cell, params, x, lengths, carry, self.reverse, ctx, path)


def recurrent(cell: _Cell, *, reverse: bool = False, return_carry: bool = False) -> Recurrent:
    """Run ``cell`` over the time axis of ``(batch, time, features)`` with `jax.lax.scan`.

    Compile time does not depend on the length. ``apply(params, x)`` gives the outputs
    ``(batch, time, hidden)``; ``apply(params, x, initial_carry=c)`` starts from ``c``
    (default zeros); ``apply(params, x, lengths=l)``, ``l`` of shape ``(batch,)``, treats
    steps ``t >= l[b]`` as padding: they change no carry, their outputs are 0, and the
    final carry is the one after step ``l[b] - 1``.

    Inside `serial`, give the input as the pair ``(x, lengths)``: the layer then outputs
    ``(y, lengths)``, so the next recurrent layer gets the lengths too; end the stack with
    ``nn.elementwise(lambda pair: pair[0])`` to keep ``y`` alone. With ``reverse=True``
    each sequence is read backwards within its own length (as ``torch.nn.LSTM`` reads a
    packed sequence) and outputs stay aligned to their input steps. With
    ``return_carry=True`` the output is ``(carry, y)`` (or ``(carry, (y, lengths))``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> lstm = nn.recurrent(nn.LSTMCell(8))
      >>> x = jnp.ones((2, 5, 3))
      >>> params = lstm.init(jax.random.key(0), x)
      >>> lstm.apply(params, x).shape
      (2, 5, 8)
      >>> y = lstm.apply(params, x, lengths=jnp.array([5, 2]))
      >>> bool((y[1, 2:] == 0).all())
      True
    """
    return Recurrent(_as_cell(cell, "recurrent"), reverse, return_carry)


@dataclasses.dataclass(frozen=True)
class Bidirectional(_SequenceLayer):
    """Two cells, one read forwards and one backwards, outputs concatenated; made by `bidirectional`."""

    forward: _Cell
    backward: _Cell
    return_carry: bool = False
    name: str | None = None
    kind = "bidirectional"

    def children(self) -> tuple[Layer, ...]:
        return (self.forward, self.backward)

    def _where(self, path: Path) -> str:
        cells = f"{type(self.forward).__name__}, {type(self.backward).__name__}"
        return f"bidirectional({cells}) at {path_str(path)}"

    def _init(
        self, key: Array, x: Any, path: Path, shared: dict[str, Any]
    ) -> tuple[Params, State, Any]:
        xs, *_ = self._parts(x, path)
        step = jax.ShapeDtypeStruct(xs.shape[::2], xs.dtype)
        params = {
            "forward": self.forward._init(key, step, (*path, "forward"), shared)[0],
            "backward": self.backward._init(key, step, (*path, "backward"), shared)[0],
        }
        return params, {}, self._output_spec(params, {}, x, path)

    def _run(
        self, params: Params, x: Array, lengths: Any, carry: Carry, ctx: Context, path: Path
    ) -> tuple[Carry, Array]:
        if not isinstance(params, dict) or set(params) != {"forward", "backward"}:
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise ParamsError(
                f"{self._where(path)}: expected parameters {{'forward', 'backward'}}; got {got}"
            )
        if carry is not None and not (isinstance(carry, (tuple, list)) and len(carry) == 2):
            raise InputTypeError(
                f"{self._where(path)}: initial_carry must be a pair (forward's carry, backward's "
                f"carry); got {type(carry).__name__}"
            )
        cf, cb = (None, None) if carry is None else carry
        cf, yf = _scan(
            self.forward, params["forward"], x, lengths, cf, False, ctx, (*path, "forward")
        )
        cb, yb = _scan(
            self.backward, params["backward"], x, lengths, cb, True, ctx, (*path, "backward")
        )
        return (cf, cb), jnp.concatenate([yf, yb], axis=-1)


def bidirectional(forward: Any, backward: Any, *, return_carry: bool = False) -> Bidirectional:
    """Read sequences both ways and concatenate the outputs: ``y[:, t] = [y_fwd[:, t], y_bwd[:, t]]``.

    ``forward`` and ``backward`` are cells (or `recurrent` layers, whose cells are used);
    the backward cell reads each sequence from its last true step to its first, and its
    outputs are aligned to their input steps, as in ``torch.nn.LSTM(bidirectional=True)``.
    Parameters are ``{"forward": ..., "backward": ...}``. Inputs, ``lengths`` and
    ``initial_carry`` (a pair: forward's, backward's) as `recurrent`; the carry is the pair
    of final carries.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> bi = nn.bidirectional(nn.GRUCell(4), nn.GRUCell(4))
      >>> x = jnp.ones((2, 5, 3))
      >>> bi.apply(bi.init(jax.random.key(0), x), x).shape
      (2, 5, 8)
    """
    return Bidirectional(
        _as_cell(forward, "bidirectional"), _as_cell(backward, "bidirectional"), return_carry
    )
