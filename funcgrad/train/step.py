"""Jitted training steps: value_and_grad of a loss, then an optax update, in one XLA program.

`make_step` does one step a call; `make_multistep` scans k steps in one call; both take a `TrainState`.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from funcgrad.errors import ConfigError, DonatedError, ShapeError
from funcgrad.nn.loops import loop_body
from funcgrad.parallel.plan import Mesh, Plan, as_plan
from funcgrad.train.state import TrainState, accumulate, nonfinite_step

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
    ``(loss, (new_state, aux))`` with both. An optimizer that takes extra arguments
    (`optax.GradientTransformationExtraArgs`, e.g. `nan_guard`) gets the loss as ``value``. With ``mesh``, the new parameters and states
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
        if isinstance(optimizer, optax.GradientTransformationExtraArgs):
            # The loss goes along as ``value`` (nan_guard checks it; reduce_on_plateau uses it).
            updates, opt_state = optimizer.update(grads, opt_state, params, value=loss)
        else:
            updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if plan is not None:
            params, new_state, opt_state = plan.constrain((params, new_state, opt_state))
        return params, new_state, opt_state, {"loss": loss, **aux}

    return update


def takes_key(loss_fn: Callable[..., Any], has_state: bool = False) -> bool:
    """Whether ``loss_fn`` has a positional parameter for a PRNG key after the batch."""
    try:
        sig = inspect.signature(loss_fn)
    except (TypeError, ValueError):
        return False
    positional = [
        p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return len(positional) > (3 if has_state else 2)


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


def _state_update(update: Update, with_key: bool) -> Callable[[TrainState, Any], Any]:
    """One step on a `TrainState`: its key, its update, its running metric sums."""

    def run(state: TrainState, batch: Any) -> tuple[TrainState, Metrics]:
        key = state.step_key() if with_key else None
        params, model_state, opt_state, metrics = update(
            state.params, state.model_state, state.opt_state, batch, key
        )
        bad = nonfinite_step(opt_state)
        take = jnp.asarray(True) if bad is None else bad < 0
        new = TrainState(
            params, opt_state, model_state, state.step + 1, state.key,
            accumulate(state.sums, metrics, take), state.key_impl,
        )  # fmt: skip
        return new, metrics

    return run


class Step:
    """A compiled training step: call it on a `TrainState` or on the arrays themselves.

    ``step(state, batch) -> (state, metrics)``, or
    ``step(params, opt_state, batch, key=None) -> (params, opt_state, metrics)`` (with
    ``model_state`` after ``params`` when the step has state). Each form is one ``jax.jit``
    function (``.on_state``, ``.on_arrays``) with its buffers donated; this wrapper picks
    one, lays the arguments out on the plan's mesh when there is one, and turns XLA's
    "buffer deleted" error into one that says the step donated them.
    """

    def __init__(
        self, what: str, on_arrays: Any, on_state: Any, plan: Plan | None, trees: int, axis: int
    ) -> None:
        self.what, self.on_arrays, self.on_state = what, on_arrays, on_state
        self.plan, self.trees, self.batch_axis = plan, trees, axis
        self.checked = False

    def _place(self, args: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
        if isinstance(args[0], TrainState):
            fn, trees = self.on_state, 1
        else:
            fn, trees = self.on_arrays, self.trees
        if self.plan is None:
            return fn, args
        placed = [self._place_tree(t, i == 0) for i, t in enumerate(args[:trees])]
        self.checked = True
        batch = self.plan.put_batch(args[trees], self.batch_axis)
        rest = [
            None if a is None else self.plan.place(a, replicated=True) for a in args[trees + 1 :]
        ]
        return fn, (*placed, batch, *rest)

    def _place_tree(self, tree: Any, first: bool) -> Any:
        assert self.plan is not None
        check = first and not self.checked
        if isinstance(tree, TrainState):
            return place_state(self.plan, tree, check_rules=check)
        return self.plan.place(tree, check_rules=check)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fn, args = self._place(args)
        try:
            return fn(*args, **kwargs)
        except (ValueError, RuntimeError) as err:
            if "deleted" not in str(err) and "donated" not in str(err):
                raise
            raise DonatedError(
                f"{self.what}: an argument was already donated to an earlier call of this step "
                "(its buffers now hold that call's results). Pass the state the step returned "
                "(params, opt_state = step(params, opt_state, batch)), or make the step with "
                "donate=False to keep your arrays"
            ) from err

    def lower(self, *args: Any, **kwargs: Any) -> Any:
        """Lower the step for these arguments (`funcgrad.inspect.cost` uses it)."""
        fn, args = self._place(args)
        return fn.lower(*args, **kwargs)


def place_state(plan: Plan, state: TrainState, *, check_rules: bool = False) -> TrainState:
    """A `TrainState` on ``plan``'s mesh: parameters and states by its rule, the rest replicated."""
    params, opt_state, model_state = plan.place(
        (state.params, state.opt_state, state.model_state), check_rules=check_rules
    )
    step, key, sums = plan.place((state.step, state.key, state.sums), replicated=True)
    return TrainState(params, opt_state, model_state, step, key, sums, state.key_impl)


def make_step(
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    *,
    has_aux: bool = False,
    has_state: bool = False,
    donate: bool = True,
    mesh: Mesh | Plan | None = None,
) -> Step:
    """A jitted training step over any optax optimizer.

    ``step(state, batch) -> (state, metrics)`` on a `TrainState`: the key of each step is
    drawn from ``state.key`` and ``state.step`` when ``loss_fn`` takes one, and the
    metrics are added to ``state.sums``. Or on the arrays:
    ``step(params, opt_state, batch, key=None) -> (params, opt_state, metrics)``, with
    ``has_state=True`` (batch-norm statistics)
    ``step(params, model_state, opt_state, batch, key=None) -> (params, model_state, opt_state, metrics)``.

    ``loss_fn(params, batch)`` (``loss_fn(params, model_state, batch)`` with state; ``key``
    appended when the step gets one) returns a scalar, or a tuple as `make_update` says.
    ``metrics`` is ``{"loss": loss, **aux}``. With ``donate=True`` the state's buffers are
    donated, so XLA updates them in place: use the ones the step returns, not the ones you
    passed in (passing those again raises `DonatedError`). A batch of new shapes
    recompiles the step, with a warning.

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
    on_state = _state_update(update, takes_key(loss_fn, has_state))

    def state_step(state: TrainState, batch: Any) -> tuple[TrainState, Metrics]:
        watch(batch)
        return on_state(state, batch)

    jit_state = jax.jit(state_step, donate_argnums=(0,) if donate else ())
    if has_state:

        def stateful(
            params: Any, model_state: Any, opt_state: Any, batch: Any, key: Any = None
        ) -> tuple[Any, Any, Any, Metrics]:
            watch(batch)
            return update(params, model_state, opt_state, batch, key)

        jitted = jax.jit(stateful, donate_argnums=(0, 1, 2) if donate else ())
        return Step("make_step", jitted, jit_state, plan, 3, 0)

    def step(params: Any, opt_state: Any, batch: Any, key: Any = None) -> tuple[Any, Any, Metrics]:
        watch(batch)
        params, _, opt_state, metrics = update(params, {}, opt_state, batch, key)
        return params, opt_state, metrics

    jitted = jax.jit(step, donate_argnums=(0, 1) if donate else ())
    return Step("make_step", jitted, jit_state, plan, 2, 0)


def make_multistep(
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    k: int,
    *,
    has_aux: bool = False,
    has_state: bool = False,
    donate: bool = True,
    mesh: Mesh | Plan | None = None,
) -> Step:
    """``k`` training steps in one compiled call: `jax.lax.scan` over a stacked block of k batches.

    ``multistep(state, batches) -> (state, metrics)`` on a `TrainState` (keys drawn per
    step as `make_step` draws them), or on the arrays
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
    on_state = _state_update(update, takes_key(loss_fn, has_state))

    def check(batches: Any) -> None:
        watch(batches)
        sizes = {jnp.shape(a)[0] if jnp.ndim(a) else None for a in jax.tree.leaves(batches)}
        if sizes != {k}:
            raise ShapeError(
                f"make_multistep: every leaf of batches needs a leading axis of k={k}; got {sizes}"
            )

    def state_steps(state: TrainState, batches: Any) -> tuple[TrainState, Metrics]:
        check(batches)
        with loop_body():
            return jax.lax.scan(on_state, state, batches)

    def run(params: Any, model_state: Any, opt_state: Any, batches: Any, keys: Any) -> Any:
        check(batches)

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

    jit_state = jax.jit(state_steps, donate_argnums=(0,) if donate else ())
    if has_state:

        def stateful(
            params: Any, model_state: Any, opt_state: Any, batches: Any, keys: Any = None
        ) -> Any:
            return run(params, model_state, opt_state, batches, keys)

        jitted = jax.jit(stateful, donate_argnums=(0, 1, 2) if donate else ())
        return Step("make_multistep", jitted, jit_state, plan, 3, 1)

    def multistep(params: Any, opt_state: Any, batches: Any, keys: Any = None) -> Any:
        params, _, opt_state, metrics = run(params, {}, opt_state, batches, keys)
        return params, opt_state, metrics

    jitted = jax.jit(multistep, donate_argnums=(0, 1) if donate else ())
    return Step("make_multistep", jitted, jit_state, plan, 2, 1)
