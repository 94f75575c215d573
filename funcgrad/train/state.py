"""The one state every training step takes and returns (`TrainState`), and the NaN guard as an optax
transformation (`nan_guard`), so `make_step`, `make_multistep` and `fit` share both.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from funcgrad.nn.checks import check_live
from funcgrad.train.trainable import Trainable, split_trainable


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["params", "opt_state", "model_state", "step", "key", "sums"],
    meta_fields=["key_impl"],
)
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything a training run carries from step to step, as one pytree.

    Attributes:
      params: the parameters being trained.
      opt_state: the optimizer's state.
      model_state: the model's state (batch-norm statistics); ``{}`` without one.
      step: how many steps have been taken (an int32 array, so it lives on the device).
      key: the run's PRNG key, held as its key data (a typed key passed to a jitted
        function each step costs a slow Python path), with ``key_impl`` naming its
        implementation; `run_key` gives it back typed. Step ``t`` draws its key as
        ``fold_in(fold_in(run_key, 1), t)`` (``fold_in(run_key, 0)`` orders the data in `fit`).
      sums: running sums of the step's metrics since they were last read, with the number
        of steps summed under ``"count"``; `fit` reads and resets them at logging points.

    A step made by `make_step` or `make_multistep` takes a ``TrainState`` and returns the
    next one: ``state, metrics = step(state, batch)``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, funcgrad as fg
      >>> loss_fn = lambda w, batch: jnp.mean((batch * w - 2 * batch) ** 2)
      >>> opt = optax.sgd(0.1)
      >>> state = fg.train.TrainState.create(jnp.zeros(()), opt, key=jax.random.key(0))
      >>> step = fg.train.make_step(loss_fn, opt)
      >>> for _ in range(50):
      ...     state, metrics = step(state, jnp.ones(4))
      >>> int(state.step), round(float(state.params), 3), int(state.sums["count"])
      (50, 2.0, 50)
    """

    params: Any
    opt_state: Any
    model_state: Any
    step: jax.Array
    key: jax.Array
    sums: dict[str, jax.Array]
    key_impl: str | None = None

    @classmethod
    def create(
        cls,
        params: Any,
        optimizer: optax.GradientTransformation,
        *,
        key: jax.Array,
        model_state: Any = None,
        opt_state: Any = None,
        step: int = 0,
        trainable: Trainable = None,
    ) -> TrainState:
        """A fresh state: ``opt_state`` defaults to ``optimizer.init(params)``; sums of the loss only.

        ``params``, ``model_state``, ``opt_state`` and ``key`` are copied: a step donates the
        state's buffers, and the arrays you passed stay yours (``model.apply(params, x)``
        still works after training). With ``trainable`` (as the step's, see `make_step`), the
        optimizer state is made for the trainable leaves only.

        Example:
          >>> import jax, jax.numpy as jnp, optax, funcgrad as fg
          >>> params = {"body": {"w": jnp.ones(3)}, "head": {"w": jnp.ones(3)}}
          >>> state = fg.train.TrainState.create(params, optax.adam(1e-3), key=jax.random.key(0),
          ...                                    trainable=lambda path: path.startswith("head"))
          >>> [x.shape for x in jax.tree.leaves(state.opt_state)]  # count, then mu and nu of head.w
          [(), (3,), (3,)]
        """
        check_live((params, model_state, opt_state), "TrainState.create")
        data, impl = key_parts(key)
        params, model_state, opt_state = jax.tree.map(jnp.copy, (params, model_state, opt_state))
        return cls(
            params=params,
            opt_state=(
                optimizer.init(split_trainable(params, trainable, "TrainState.create")[0])
                if opt_state is None
                else opt_state
            ),
            model_state={} if model_state is None else model_state,
            step=jnp.asarray(step, jnp.int32),
            key=data,
            sums=zero_sums({"loss": jax.ShapeDtypeStruct((), jnp.float32)}),
            key_impl=impl,
        )

    def replace(self, **changes: Any) -> TrainState:
        """A copy with some fields changed (the state is immutable)."""
        return dataclasses.replace(self, **changes)

    def run_key(self) -> jax.Array:
        """The run's PRNG key, typed as it was given."""
        if self.key_impl is None:
            return self.key
        return jax.random.wrap_key_data(self.key, impl=self.key_impl)

    def step_key(self) -> jax.Array:
        """The PRNG key of the step about to run."""
        return jax.random.fold_in(jax.random.fold_in(self.run_key(), 1), self.step)

    def as_dict(self) -> dict[str, Any]:
        """The fields as a dict: the layout of the checkpoints `fit` writes."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def key_parts(key: jax.Array) -> tuple[jax.Array, str | None]:
    """A fresh copy of ``key``'s data and its implementation's name (None for a raw uint32 key)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jnp.copy(jax.random.key_data(key)), str(jax.random.key_impl(key))
    return jnp.copy(key), None


def zero_sums(shapes: dict[str, Any]) -> dict[str, jax.Array]:
    """Zeroed running sums for metrics of these shapes (``jax.ShapeDtypeStruct`` values), plus a count."""
    sums = {k: jnp.zeros(v.shape, v.dtype) for k, v in shapes.items() if k != "count"}
    return {**sums, "count": jnp.zeros((), jnp.int32)}


def accumulate(sums: dict[str, jax.Array], metrics: dict[str, Any], take: Any) -> dict[str, Any]:
    """Add one step's metrics to the running sums (those metrics the sums track), if ``take``."""
    new = {
        k: v + jnp.where(take, metrics[k], 0).astype(v.dtype)
        for k, v in sums.items()
        if k in metrics
    }
    return {**sums, **new, "count": sums["count"] + take.astype(jnp.int32)}


class NanGuardState(NamedTuple):
    """The state of `nan_guard`: the wrapped optimizer's state, its step count, and the first
    step whose loss, gradients or updates were not finite (-1 while there is none)."""

    inner_state: Any
    steps: jax.Array
    first_bad: jax.Array


def finite(*trees: Any) -> jax.Array:
    """Whether every inexact value in ``trees`` is finite, as one boolean scalar.

    ``x * 0`` is 0 for a finite ``x`` and NaN for NaN or ±inf, so one sum per leaf and one
    `jnp.isfinite` decide, where an ``isfinite`` per leaf would need a boolean reduction per
    leaf and a stack; it cannot overflow, as a sum of squares can.
    """
    total = jnp.zeros((), jnp.float32)
    for x in jax.tree.leaves(trees):
        if jnp.issubdtype(jnp.result_type(x), jnp.inexact):
            total = total + jnp.sum(jnp.real(x) * 0 + jnp.imag(x) * 0).astype(jnp.float32)
    return jnp.isfinite(total)


def nan_guard(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Wrap an optimizer so that the first step with a non-finite loss or gradient, and every
    step after it, changes nothing; the state records which step that was.

    `optax.apply_if_finite` skips a bad step and carries on (and applies updates again after
    ``max_consecutive_errors``); a training run that met a NaN must instead stop with the
    parameters from before it, so this guard latches. The loss is checked when the step
    passes it as ``value=`` (`make_step` does). `fit` wraps its optimizer in this guard
    (``nan_guard=True``) and stops at the next logging point; `nonfinite_step` reads it.

    Example:
      >>> import jax.numpy as jnp, optax, funcgrad as fg
      >>> opt = fg.train.nan_guard(optax.sgd(1.0))
      >>> state = opt.init(jnp.ones(2))
      >>> updates, state = opt.update(jnp.array([1.0, jnp.nan]), state, jnp.ones(2))
      >>> updates.tolist(), int(fg.train.nonfinite_step(state))
      ([0.0, 0.0], 0)
    """

    def init(params: Any) -> NanGuardState:
        return NanGuardState(inner.init(params), jnp.zeros((), jnp.int32), -jnp.ones((), jnp.int32))

    def update(
        grads: Any, state: NanGuardState, params: Any = None, *, value: Any = None, **extra: Any
    ) -> tuple[Any, NanGuardState]:
        # Decided before the optimizer runs, from the loss and the gradients (one fused sum
        # each), so that the optimizer runs inside the conditional's taken branch, in place,
        # fused as without a guard; the other branch returns zero updates and the old state.
        # (Selects after the update, or a conditional over its results, cost a pass or a
        # copy per leaf.)
        ok = finite(value, grads) & (state.first_bad < 0)
        if isinstance(inner, optax.GradientTransformationExtraArgs):
            extra = {**extra, **({} if value is None else {"value": value})}
        else:
            extra = {}

        def step() -> tuple[Any, Any]:
            return inner.update(grads, state.inner_state, params, **extra)

        def skip() -> tuple[Any, Any]:
            shapes = jax.eval_shape(step)[0]
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
            return zeros, state.inner_state

        updates, inner_state = jax.lax.cond(ok, step, skip)
        first_bad = jnp.where(~ok & (state.first_bad < 0), state.steps, state.first_bad)
        return updates, NanGuardState(inner_state, state.steps + 1, first_bad)

    return optax.GradientTransformationExtraArgs(init, update)


def _guard_states(opt_state: Any) -> list[NanGuardState]:
    is_guard = lambda x: isinstance(x, NanGuardState)
    return [x for x in jax.tree.leaves(opt_state, is_leaf=is_guard) if is_guard(x)]


def nonfinite_step(opt_state: Any) -> jax.Array | None:
    """The first step a `nan_guard` inside ``opt_state`` refused (-1: none yet); None without a guard."""
    guards = _guard_states(opt_state)
    return guards[0].first_bad if guards else None


def unwrap_guard(opt_state: Any) -> Any:
    """The wrapped optimizer's state, if ``opt_state`` is a `nan_guard`'s; else ``opt_state``."""
    return opt_state.inner_state if isinstance(opt_state, NanGuardState) else opt_state
