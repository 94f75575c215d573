"""The sequence layers, `recurrent` and `bidirectional`: a cell scanned over ``(batch, time, features)``.

The carry between time steps is state: `Layer.init_carry` makes the slot, ``apply(..., state=)`` returns the final carry.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from funcgrad.errors import DTypeError, InputTypeError, ParamsError, ShapeError
from funcgrad.nn.cells import Carry, Cell, GRUCell, LSTMCell
from funcgrad.nn.layer import (
    Array,
    Context,
    Layer,
    Params,
    Path,
    SlotRequest,
    Spec,
    State,
    apply_child,
    compute_dtype,
)
from funcgrad.nn.loops import loop_body
from funcgrad.paths import describe

__all__ = ["Bidirectional", "GRUCell", "LSTMCell", "Recurrent", "bidirectional", "recurrent"]


def _unpack(x: Any, where: str) -> tuple[Any, Any, bool]:
    """``(x, lengths, paired)``: the sequence alone, or the pair ``(x, lengths)``."""
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise InputTypeError(
                f"{where}: expected x of shape (batch, time, features) or a pair (x, lengths); "
                f"got a tuple of {len(x)}"
            )
        return x[0], x[1], True
    return x, None, False


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
    cell: Cell,
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


def _as_cell(layer: Any, where: str) -> Cell:
    if isinstance(layer, Recurrent):
        return layer.cell
    if not isinstance(layer, Cell):
        raise InputTypeError(
            f"{where}: expected a recurrent cell (nn.LSTMCell, nn.GRUCell) or nn.recurrent(cell); "
            f"got {type(layer).__name__}"
        )
    return layer


def _warn_return_carry(where: str) -> None:
    warnings.warn(
        f"{where}(..., return_carry=True) is deprecated: the carry is state; use "
        "`y, state = layer.apply(params, x, state=layer.init_carry(batch))` and read the final "
        "carry from `state['carry']` (inside a model, from the layer's slot of the state)",
        DeprecationWarning,
        stacklevel=3,
    )


class _SequenceLayer(Layer):
    """What `Recurrent` and `Bidirectional` share: input forms, the carry slot, old keywords."""

    return_carry: bool = False

    def _where(self, path: Path) -> str:
        raise NotImplementedError

    def _carry_slot(self, dtype: Any, batch: int) -> Carry:
        raise NotImplementedError

    def _init_slot(self, request: SlotRequest, params: Params | None, path: Path) -> State:
        if request.what != "carry":
            return {}
        return {"carry": self._carry_slot(request.dtype, request.batch)}

    def _legacy_keywords(
        self, x: Any, state: State | None, keywords: dict[str, Any], where: str
    ) -> tuple[Any, State | None, Callable[[Any], Any]]:
        carry = keywords.pop("initial_carry", None)
        lengths = keywords.pop("lengths", None)
        x, state, finish = super()._legacy_keywords(x, state, keywords, where)
        if carry is None and lengths is None:
            return x, state, finish
        if isinstance(x, (tuple, list)):
            raise InputTypeError(
                f"{self.kind}: give lengths either in the input (x, lengths) or as "
                "lengths=..., with initial_carry=..., not both"
            )
        if carry is not None:
            warnings.warn(
                f"{where}(..., initial_carry=c) is deprecated: the carry is state; use "
                "`y, state = layer.apply(params, x, state={'carry': c})` (or start from "
                "layer.init_carry(batch))",
                DeprecationWarning,
                stacklevel=3,
            )
            state = {**(state or {}), "carry": carry}
        if lengths is None:
            return x, state, finish
        warnings.warn(
            f"{where}(..., lengths=l) is deprecated: lengths are data; pass the pair "
            "`y, l = layer.apply(params, (x, l))`",
            DeprecationWarning,
            stacklevel=3,
        )
        if self.return_carry:
            return (x, jnp.asarray(lengths)), state, lambda out: (out[0], out[1][0])
        return (x, jnp.asarray(lengths)), state, lambda out: out[0]

    def _parts(self, x: Any, path: Path) -> tuple[Any, Any, bool]:
        xs, lengths, paired = _unpack(x, self._where(path))
        xs = jax.tree.map(jnp.asarray, xs) if not isinstance(xs, Spec) else xs
        if lengths is not None and not isinstance(lengths, Spec):
            lengths = jnp.asarray(lengths)
        _check_sequence(xs, lengths, self._where(path))
        return xs, lengths, paired

    def _run(
        self, params: Params, x: Array, lengths: Any, carry: Carry, ctx: Context, path: Path
    ) -> tuple[Carry, Array]:
        raise NotImplementedError

    def _apply(self, params: Params, state: State, x: Any, ctx: Context, path: Path) -> Any:
        xs, lengths, paired = self._parts(x, path)
        if not isinstance(state, Mapping) or not set(state) <= {"carry"}:
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ParamsError(
                f"{self._where(path)}: its state is {{}} or {{'carry': c}} (from init_carry); "
                f"got {got}"
            )
        start = state.get("carry")
        carry, y = self._run(params, xs, lengths, start, ctx, path)
        out = (y, lengths) if paired else y
        if self.return_carry:
            out = (carry, out)
        if start is None:
            return out, {}
        # The returned slot keeps the given carry's dtypes, so the state's structure is stable.
        dtypes = jax.tree.map(lambda c: jnp.result_type(c), start)
        return out, {"carry": jax.tree.map(lambda c, d: c.astype(d), carry, dtypes)}


@dataclasses.dataclass(frozen=True)
class Recurrent(_SequenceLayer):
    """A cell scanned over time; made by `recurrent`. Its parameters are the cell's own."""

    cell: Cell
    reverse: bool = False
    return_carry: bool = False
    name: str | None = None
    kind = "recurrent"

    def children(self) -> tuple[Layer, ...]:
        return (self.cell,)

    def _where(self, path: Path) -> str:
        return f"recurrent({type(self.cell).__name__}) at {describe(path)}"

    def _carry_slot(self, dtype: Any, batch: int) -> Carry:
        return self.cell.initial_carry(batch, dtype or self.cell.dtype or self.cell.param_dtype)

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


def recurrent(cell: Cell, *, reverse: bool = False, return_carry: bool = False) -> Recurrent:
    """Run ``cell`` over the time axis of ``(batch, time, features)`` with `jax.lax.scan`.

    Compile time does not depend on the length. ``apply(params, x)`` gives the outputs
    ``(batch, time, hidden)``, starting from the zero carry.

    The carry is state (the calling convention of every layer): ``y, state =
    layer.apply(params, x, state=layer.init_carry(batch))`` starts from the carry in
    ``state["carry"]`` (``init_carry`` makes zeros; put any carry there) and returns the
    final carry in the same place, so a long sequence can be run in pieces. Inside a model
    the slot sits at the layer's key, as ``model.init_carry(batch)`` lays it out.

    Lengths are data: the input ``(x, lengths)``, ``lengths`` of shape ``(batch,)``, gives
    the output ``(y, lengths)`` (so in `serial` the next recurrent layer gets them too);
    steps ``t >= lengths[b]`` are padding: they change no carry, their outputs are 0, and
    the final carry is the one after step ``lengths[b] - 1``. With ``reverse=True`` each
    sequence is read backwards within its own length (as ``torch.nn.LSTM`` reads a packed
    sequence) and outputs stay aligned to their input steps.

    ``return_carry=True`` (output ``(carry, y)``) and ``apply``'s ``initial_carry=`` and
    ``lengths=`` keywords are deprecated spellings of the state slot and the pair.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> lstm = nn.recurrent(nn.LSTMCell(8))
      >>> x = jnp.ones((2, 5, 3))
      >>> params = lstm.init(jax.random.key(0), x)
      >>> lstm.apply(params, x).shape
      (2, 5, 8)
      >>> y, lengths = lstm.apply(params, (x, jnp.array([5, 2])))
      >>> bool((y[1, 2:] == 0).all())
      True
      >>> y, state = lstm.apply(params, x, state=lstm.init_carry(2))
      >>> h, c = state["carry"]
      >>> h.shape
      (2, 8)
    """
    if return_carry:
        _warn_return_carry("recurrent")
    return Recurrent(_as_cell(cell, "recurrent"), reverse, return_carry)


@dataclasses.dataclass(frozen=True)
class Bidirectional(_SequenceLayer):
    """Two cells, one read forwards and one backwards, outputs concatenated; made by `bidirectional`."""

    forward: Cell
    backward: Cell
    return_carry: bool = False
    name: str | None = None
    kind = "bidirectional"

    def children(self) -> tuple[Layer, ...]:
        return (self.forward, self.backward)

    def _where(self, path: Path) -> str:
        cells = f"{type(self.forward).__name__}, {type(self.backward).__name__}"
        return f"bidirectional({cells}) at {describe(path)}"

    def _carry_slot(self, dtype: Any, batch: int) -> Carry:
        return tuple(
            c.initial_carry(batch, dtype or c.dtype or c.param_dtype)
            for c in (self.forward, self.backward)
        )

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
                f"{self._where(path)}: its carry must be a pair (forward's carry, backward's "
                f"carry), as init_carry makes it; got {type(carry).__name__}"
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
    Parameters are ``{"forward": ..., "backward": ...}``. Inputs ``x`` or ``(x, lengths)``
    as `recurrent`; the state slot ``{"carry": (forward's carry, backward's carry)}``
    (from `init_carry`) starts both and receives both final carries.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> bi = nn.bidirectional(nn.GRUCell(4), nn.GRUCell(4))
      >>> x = jnp.ones((2, 5, 3))
      >>> bi.apply(bi.init(jax.random.key(0), x), x).shape
      (2, 5, 8)
    """
    if return_carry:
        _warn_return_carry("bidirectional")
    return Bidirectional(
        _as_cell(forward, "bidirectional"), _as_cell(backward, "bidirectional"), return_carry
    )
