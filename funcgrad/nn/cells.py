"""Recurrent cells, LSTMCell and GRUCell: one time step, ``(carry, x_t) -> (carry, y_t)``.

`funcgrad.nn.recurrent` scans a cell over the time axis; the cell alone is the step function.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from funcgrad.errors import ConfigError, InputTypeError, ShapeError
from funcgrad.nn.layer import (
    Array,
    Context,
    Initializer,
    ParamLayer,
    Params,
    ParamSpec,
    Path,
    State,
    check_params,
    compute_dtype,
    require_float,
)
from funcgrad.paths import describe

Carry = Any


@dataclasses.dataclass(frozen=True)
class Cell(ParamLayer):
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
                f"{layer} at {describe(path)}: expected x_t of shape (..., features); got a scalar"
            )
        if carry is not None:
            shape = (*xt.shape[:-1], self.hidden)
            expected = jax.tree.map(lambda _: shape, self.initial_carry(1))
            got = jax.tree.map(lambda c: tuple(jnp.shape(c)), carry)
            if got != expected:
                raise ShapeError(
                    f"{layer} at {describe(path)}: expected a carry like {expected} for x_t "
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
class LSTMCell(Cell):
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
class GRUCell(Cell):
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
