"""Jitted training steps: value_and_grad of a loss, then an optax update, in one XLA program.

`make_step` does one step a call; `make_multistep` scans k steps in one call. Nothing of funcgrad runs per step.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from funcgrad.errors import ConfigError, ShapeError
from funcgrad.nn.conv import loop_body
from funcgrad.parallel.plan import Mesh, Plan, as_plan

Metrics = dict[str, Any]
Update = Callable[[Any, Any, Any, Any, Any], tuple[Any, Any, Any, Metrics]]


def _scalar_loss(value: Any) -> Any:
    if not hasattr(value, "shape") or jnp.shape(value) != ():
        raise ShapeError(
            f"make_step: loss_fn must return a scalar loss (or (loss, aux) with has_aux=True); "
            f"got {type(value).__name__} of shape {jnp.shape(value)}"
        )
    return value


def make_update(
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    *,
    has_aux: bool = False,
    has_state: bool = False,
    mesh: Mesh | Plan | None = None,
) -> Update:
    """The un-jitted ``update(params, model_state, opt_state, batch, key)`` behind the steps.

    ``loss_fn`` is called as ``loss_fn(params, batch)``, with ``key`` appended when it is
    not None and ``model_state`` inserted after ``params`` when ``has_state``. It returns
    the loss; ``(loss, aux)`` with ``has_aux``; ``(loss, new_state)`` with ``has_state``;
    ``(loss, (new_state, aux))`` with both. With ``mesh``, the new parameters and states
    are constrained to the plan's layout, so a sharded step keeps them where they were.
    """
    plan = as_plan(mesh)

    def update(
        params: Any, model_state: Any, opt_state: Any, batch: Any, key: Any
    ) -> tuple[Any, Any, Any, Metrics]:
        def objective(p: Any) -> tuple[Any, tuple[Any, Metrics]]:
            args = (p, model_state, batch) if has_state else (p, batch)
            out = loss_fn(*args) if key is None else loss_fn(*args, key)
            if not (has_aux or has_state):
                return _scalar_loss(out), (model_state, {})
            loss, extra = out
            if has_state and has_aux:
                new_state, aux = extra
            elif has_state:
                new_state, aux = extra, {}
            else:
                new_state, aux = model_state, extra
            return _scalar_loss(loss), (new_state, dict(aux))

        (loss, (new_state, aux)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if plan is not None:
            params, new_state, opt_state = plan.constrain((params, new_state, opt_state))
        return params, new_state, opt_state, {"loss": loss, **aux}

    return update


class _ShapeWatch:
    """Warns, at trace time only, when a step is traced again for batches of new shapes."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.seen: Any = None

    def __call__(self, batch: Any) -> None:
        shapes = jax.tree.map(lambda a: (tuple(jnp.shape(a)), str(jnp.result_type(a))), batch)
        if self.seen is None:
            self.seen = shapes
        elif shapes != self.seen:
            warnings.warn(
                f"{self.what}: recompiling for batches of new shapes {shapes} (first compiled for "
                f"{self.seen}); keep batch shapes fixed (drop_last=True) to compile once",
                stacklevel=4,
            )
            self.seen = shapes


def make_step(
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    *,
    has_aux: bool = False,
    has_state: bool = False,
    donate: bool = True,
    mesh: Mesh | Plan | None = None,
) -> Callable[..., Any]:
    """A jitted training step over any optax optimizer.

    ``step(params, opt_state, batch, key=None) -> (params, opt_state, metrics)``, or with
    ``has_state=True`` (batch-norm statistics)
    ``step(params, model_state, opt_state, batch, key=None) -> (params, model_state, opt_state, metrics)``.

    ``loss_fn(params, batch)`` (``loss_fn(params, model_state, batch)`` with state; ``key``
    appended when the step gets one) returns a scalar, or a tuple as `make_update` says.
    ``metrics`` is ``{"loss": loss, **aux}``. With ``donate=True`` the parameter and
    optimizer buffers are donated, so XLA updates them in place: do not reuse the arrays
    you passed in. A batch of new shapes recompiles the step, with a warning.

    With ``mesh`` (a `jax.sharding.Mesh`: data parallel; or a `funcgrad.parallel.Plan`:
    FSDP or tensor-parallel rules) the same step runs sharded: parameters and optimizer
    state are laid out by the plan (on the first call, if they are not already), each
    batch is split over the data axis, and XLA's partitioner inserts the collectives.

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
    plan = as_plan(mesh)
    update = make_update(loss_fn, optimizer, has_aux=has_aux, has_state=has_state, mesh=plan)
    watch = _ShapeWatch("make_step")
    if has_state:

        def stateful(
            params: Any, model_state: Any, opt_state: Any, batch: Any, key: Any = None
        ) -> tuple[Any, Any, Any, Metrics]:
            watch(batch)
            return update(params, model_state, opt_state, batch, key)

        jitted = jax.jit(stateful, donate_argnums=(0, 1, 2) if donate else ())
        return jitted if plan is None else _Sharded(jitted, plan, 3, 0)

    def step(params: Any, opt_state: Any, batch: Any, key: Any = None) -> tuple[Any, Any, Metrics]:
        watch(batch)
        params, _, opt_state, metrics = update(params, {}, opt_state, batch, key)
        return params, opt_state, metrics

    jitted = jax.jit(step, donate_argnums=(0, 1) if donate else ())
    return jitted if plan is None else _Sharded(jitted, plan, 2, 0)


class _Sharded:
    """A jitted step that first lays its arguments out on the plan's mesh.

    The first ``trees`` arguments (parameters and states) go where the plan's rule says,
    the next (the batch) is split over the data axis, the key is replicated. Arrays
    already in place are not copied, so after the first step this costs a sharding
    comparison per leaf.
    """

    def __init__(self, jitted: Any, plan: Plan, trees: int, batch_axis: int) -> None:
        self.jitted, self.plan, self.trees, self.batch_axis = jitted, plan, trees, batch_axis
        self.checked = False

    def _place(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        trees = [
            self.plan.place(t, check_rules=i == 0 and not self.checked)
            for i, t in enumerate(args[: self.trees])
        ]
        self.checked = True
        batch = self.plan.put_batch(args[self.trees], self.batch_axis)
        rest = [
            None if a is None else self.plan.place(a, replicated=True)
            for a in args[self.trees + 1 :]
        ]
        return (*trees, batch, *rest)

    def __call__(self, *args: Any) -> Any:
        return self.jitted(*self._place(args))

    def lower(self, *args: Any) -> Any:
        """Lower the sharded step for these arguments (`funcgrad.inspect.cost` uses it)."""
        return self.jitted.lower(*self._place(args))


def make_multistep(
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    k: int,
    *,
    has_aux: bool = False,
    has_state: bool = False,
    donate: bool = True,
    mesh: Mesh | Plan | None = None,
) -> Callable[..., Any]:
    """``k`` training steps in one compiled call: `jax.lax.scan` over a stacked block of k batches.

    ``multistep(params, opt_state, batches, keys=None) -> (params, opt_state, metrics)``
    (with ``has_state``, ``model_state`` after ``params``, as in `make_step`). Every leaf
    of ``batches`` has a leading axis of size ``k``; ``keys``, if given, is an array of k
    PRNG keys, one per step. ``metrics`` holds each step's values, stacked (shape
    ``(k,)``). The result equals k calls of `make_step` on the same batches and keys.

    One call costs one dispatch instead of k: on small models, where the per-step
    overhead dominates, this is several times faster. Convolutions in the body take their
    kernel gradient in a form XLA:CPU runs fast in loops (docs/training.md). ``mesh`` shards it as in
    `make_step` (each batch of the block split over the data axis).

    Example:
      >>> import jax, jax.numpy as jnp, optax, funcgrad as fg
      >>> loss_fn = lambda w, b: jnp.mean((b[0] * w - b[1]) ** 2)
      >>> opt = optax.sgd(0.1)
      >>> run = fg.train.make_multistep(loss_fn, opt, k=50)
      >>> block = (jnp.ones((50, 4)), 2 * jnp.ones((50, 4)))
      >>> w, _, metrics = run(jnp.array(0.0), opt.init(jnp.array(0.0)), block)
      >>> metrics["loss"].shape, round(float(w), 3)
      ((50,), 2.0)
    """
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"make_multistep: k must be a positive int; got {k!r}")
    plan = as_plan(mesh)
    update = make_update(loss_fn, optimizer, has_aux=has_aux, has_state=has_state, mesh=plan)
    watch = _ShapeWatch("make_multistep")

    def run(params: Any, model_state: Any, opt_state: Any, batches: Any, keys: Any) -> Any:
        watch(batches)
        sizes = {jnp.shape(a)[0] if jnp.ndim(a) else None for a in jax.tree.leaves(batches)}
        if sizes != {k}:
            raise ShapeError(
                f"make_multistep: every leaf of batches needs a leading axis of k={k}; got {sizes}"
            )

        def body(carry: Any, xs: Any) -> tuple[Any, Metrics]:
            p, s, o = carry
            batch, key = xs
            p, s, o, metrics = update(p, s, o, batch, key)
            return (p, s, o), metrics

        with loop_body():
            (params, model_state, opt_state), metrics = jax.lax.scan(
                body, (params, model_state, opt_state), (batches, keys)
            )
        return params, model_state, opt_state, metrics

    if has_state:

        def stateful(
            params: Any, model_state: Any, opt_state: Any, batches: Any, keys: Any = None
        ) -> Any:
            return run(params, model_state, opt_state, batches, keys)

        jitted = jax.jit(stateful, donate_argnums=(0, 1, 2) if donate else ())
        return jitted if plan is None else _Sharded(jitted, plan, 3, 1)

    def multistep(params: Any, opt_state: Any, batches: Any, keys: Any = None) -> Any:
        params, _, opt_state, metrics = run(params, {}, opt_state, batches, keys)
        return params, opt_state, metrics

    jitted = jax.jit(multistep, donate_argnums=(0, 1) if donate else ())
    return jitted if plan is None else _Sharded(jitted, plan, 2, 1)
