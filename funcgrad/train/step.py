"""Jitted training steps: value_and_grad of a loss, then an optax update, in one XLA program.

`make_step` does one step a call; `make_multistep` scans k steps in one call; both take a `TrainState`.
"""

from __future__ import annotations

import dataclasses
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
from funcgrad.paths import leaves_with_paths
from funcgrad.train.state import TrainState, accumulate, nonfinite_step
from funcgrad.train.trainable import Trainable, merge_trainable, split_trainable
from funcgrad.train.trainable import check as check_trainable

Metrics = dict[str, Any]
Update = Callable[[Any, Any, Any, Any, Any], tuple[Any, Any, Any, Metrics]]


def _scalar_loss(value: Any) -> Any:
    if not hasattr(value, "shape") or jnp.shape(value) != ():
        raise ShapeError(
            f"make_step: loss_fn must return a scalar loss (or (loss, aux) with has_aux=True); "
            f"got {type(value).__name__} of shape {jnp.shape(value)}"
        )
    return value


def key_style(
    loss_fn: Callable[..., Any],
    with_key: bool | None,
    has_state: bool = False,
    what: str = "make_step",
) -> str | None:
    """How ``loss_fn`` gets its PRNG key: ``"keyword"`` (``key=``), ``"positional"`` (deprecated), or None.

    ``with_key=True`` passes ``key=`` (the loss declares a ``key`` parameter); ``False`` passes
    none. ``None`` (not said) keeps the old inference for a while: a loss whose parameter
    after the batch is positional and *required* gets the key there, with a
    `DeprecationWarning`; a parameter with a default never receives a key.
    """
    try:
        params = inspect.signature(loss_fn).parameters
    except (TypeError, ValueError):
        params = None
    if with_key:
        if params is not None and not any(
            p.kind is p.VAR_KEYWORD
            or (p.name == "key" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
            for p in params.values()
        ):
            raise ConfigError(
                f"{what}: with_key=True passes the step's PRNG key as key=, but loss_fn "
                f"{getattr(loss_fn, '__name__', loss_fn)!s} has no parameter named key; "
                "declare it: def loss_fn(params, batch, *, key)"
            )
        return "keyword"
    if with_key is not None or params is None:
        return None
    positional = [
        p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    after = 3 if has_state else 2
    if len(positional) > after and positional[after].default is inspect.Parameter.empty:
        warnings.warn(
            f"{what}: passing a PRNG key because loss_fn has a required parameter after the "
            "batch is deprecated; say so: make_step(loss_fn, optimizer, with_key=True) with "
            "def loss_fn(params, batch, *, key)",
            DeprecationWarning,
            stacklevel=3,
        )
        return "positional"
    return None


def call_loss(
    loss_fn: Callable[..., Any], style: str | None, args: tuple[Any, ...], key: Any
) -> Any:
    """``loss_fn(*args)`` with ``key`` passed as `key_style` settled: ``key=key``, after
    ``args`` (the deprecated positional form), or not at all (style None)."""
    if style is None:
        return loss_fn(*args)
    return loss_fn(*args, key=key) if style == "keyword" else loss_fn(*args, key)


def make_update(
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    *,
    has_aux: bool = False,
    has_state: bool = False,
    with_key: bool | None = None,
    mesh: Mesh | Plan | None = None,
    trainable: Trainable = None,
    microbatches: int = 1,
) -> Update:
    """The un-jitted ``update(params, model_state, opt_state, batch, key)`` behind the steps.

    ``loss_fn`` is called as ``loss_fn(params, batch)``, with ``model_state`` inserted after
    ``params`` when ``has_state``, and ``key=key`` with ``with_key=True``. It returns the
    loss; ``(loss, aux)`` with ``has_aux``; ``(loss, new_state)`` with ``has_state``;
    ``(loss, (new_state, aux))`` with both. An optimizer that takes extra arguments
    (`optax.GradientTransformationExtraArgs`, e.g. `nan_guard`) gets the loss as ``value``.
    With ``mesh``, the new parameters and states are constrained to the plan's layout, so a
    sharded step keeps them where they were.

    ``trainable`` (a predicate on a leaf's dotted path, or a pytree of bools) trains only
    the leaves it selects; ``microbatches=k`` accumulates the gradient over k parts of each
    batch. Both are described in `make_step`.

    Example:
      >>> import jax, jax.numpy as jnp, optax, funcgrad as fg
      >>> loss_fn = lambda w, b, *, key: jnp.mean((b * w - 2 * b + 0 * jax.random.normal(key)) ** 2)
      >>> opt = optax.sgd(0.1)
      >>> update = fg.train.make_update(loss_fn, opt, with_key=True)
      >>> w, _, _, metrics = update(jnp.zeros(()), {}, opt.init(jnp.zeros(())), jnp.ones(4), jax.random.key(0))
      >>> round(float(w), 3), round(float(metrics["loss"]), 3)
      (0.4, 4.0)
    """
    check_microbatches(microbatches, "make_update")
    check_trainable(trainable, "make_update")
    return update_fn(
        loss_fn, optimizer, has_aux, has_state, key_style(loss_fn, with_key, has_state), mesh,
        trainable=trainable, microbatches=microbatches, what="make_update",
    )  # fmt: skip


def check_microbatches(microbatches: Any, what: str) -> None:
    """Refuse a ``microbatches=`` that is not a positive int."""
    if isinstance(microbatches, bool) or not isinstance(microbatches, int) or microbatches < 1:
        raise ConfigError(f"{what}: microbatches must be a positive int; got {microbatches!r}")


def _split_batch(batch: Any, k: int, what: str) -> Any:
    """``batch`` with every leaf's leading axis ``n`` made ``(k, n // k)``: microbatch ``i``
    holds rows ``i, i + k, i + 2k, ...``, so a batch split over devices stays split the same
    way in every microbatch."""

    def part(path: str, a: Any) -> Any:
        n = jnp.shape(a)[0] if jnp.ndim(a) else None
        if n is None or n % k:
            rows = "a scalar" if n is None else f"a batch of {n} rows"
            raise ShapeError(
                f"{what}: microbatches={k} splits every batch leaf's leading axis into {k} equal "
                f"parts, but batch leaf '{path or '(top)'}' is {rows}; use a batch size that "
                f"is a multiple of {k}"
            )
        return jnp.moveaxis(jnp.reshape(a, (n // k, k, *jnp.shape(a)[1:])), 1, 0)

    leaves = [part(path, a) for path, a in leaves_with_paths(batch)]
    return jax.tree.unflatten(jax.tree.structure(batch), leaves)


def _check_opt_state(optimizer: Any, train: Any, opt_state: Any, what: str) -> None:
    """Refuse, while tracing, an optimizer state made for other parameters than those trained
    (say, for all of them when ``trainable=`` selects some): its leaves are not as many as
    ``optimizer.init`` of the trained ones makes."""
    have = len(jax.tree.leaves(opt_state))
    want = len(jax.tree.leaves(jax.eval_shape(optimizer.init, train)))
    if have != want:
        raise ConfigError(
            f"{what}: the optimizer state does not fit the parameters being trained (it has "
            f"{have} leaves, optimizer.init of the trainable parameters {want}); make the "
            "state with the step's trainable=: TrainState.create(params, optimizer, key=key, "
            "trainable=trainable), or optimizer.init(fg.train.split_trainable(params, "
            "trainable)[0])"
        )


def update_fn(
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    has_aux: bool,
    has_state: bool,
    style: str | None,
    mesh: Mesh | Plan | None,
    *,
    trainable: Trainable = None,
    microbatches: int = 1,
    what: str = "make_step",
) -> Update:
    """`make_update` for a key style `key_style` has already settled (so it warns only once)."""
    plan = as_plan(mesh)

    def call(args: tuple[Any, ...], key: Any) -> Any:
        return call_loss(loss_fn, None if key is None else style, args, key)

    def value_and_grad(
        train: Any, frozen: Any, model_state: Any, batch: Any, key: Any
    ) -> tuple[tuple[Any, tuple[Any, Metrics]], Any]:
        """The loss and its gradient for the trainable leaves; the frozen ones are closed over,
        so no gradient is computed for them."""

        def objective(t: Any) -> tuple[Any, tuple[Any, Metrics]]:
            p = merge_trainable(t, frozen)
            out = call((p, model_state, batch) if has_state else (p, batch), key)
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

        return jax.value_and_grad(objective, has_aux=True)(train)

    def accumulated(
        train: Any, frozen: Any, model_state: Any, batch: Any, key: Any
    ) -> tuple[tuple[Any, tuple[Any, Metrics]], Any]:
        """`value_and_grad` as the mean over ``microbatches`` parts of the batch, one at a time
        (`jax.lax.scan`), so only one part's activations are live at once."""
        k = microbatches
        parts = _split_batch(batch, k, what)

        def body(carry: Any, xs: Any) -> tuple[Any, Any]:
            total, state = carry
            part, i = xs
            part_key = None if key is None else jax.random.fold_in(key, i)
            (loss, (state, aux)), grads = value_and_grad(train, frozen, state, part, part_key)
            return (jax.tree.map(jnp.add, total, grads), state), (loss, aux)

        zeros = jax.tree.map(
            lambda p: jnp.zeros(jnp.shape(p), jnp.promote_types(p.dtype, jnp.float32)), train
        )
        (total, new_state), (losses, aux) = jax.lax.scan(
            body, (zeros, model_state), (parts, jnp.arange(k))
        )
        grads = jax.tree.map(lambda g, p: (g / k).astype(p.dtype), total, train)
        aux = jax.tree.map(lambda a: jnp.mean(a, axis=0), aux)
        return (jnp.mean(losses), (new_state, aux)), grads

    gradient = value_and_grad if microbatches == 1 else accumulated

    def update(
        params: Any, model_state: Any, opt_state: Any, batch: Any, key: Any
    ) -> tuple[Any, Any, Any, Metrics]:
        train, frozen = split_trainable(params, trainable, what)
        _check_opt_state(optimizer, train, opt_state, what)
        (loss, (new_state, aux)), grads = gradient(train, frozen, model_state, batch, key)
        if isinstance(optimizer, optax.GradientTransformationExtraArgs):
            # The loss goes along as ``value`` (nan_guard checks it; reduce_on_plateau uses it).
            updates, opt_state = optimizer.update(grads, opt_state, train, value=loss)
        else:
            updates, opt_state = optimizer.update(grads, opt_state, train)
        params = merge_trainable(optax.apply_updates(train, updates), frozen)
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


def _donated(what: str, err: Exception) -> Exception:
    """XLA's "buffer deleted" error, said in the user's words; other errors as they are."""
    if "deleted" not in str(err) and "donated" not in str(err):
        return err
    return DonatedError(
        f"{what}: an array passed to this step was donated to an earlier call (its buffers now "
        "hold that call's results). Pass the state the step returned "
        "(state, metrics = step(state, batch)); to keep arrays of your own, make the state "
        "with TrainState.create (it copies them) or the step with donate=False"
    )


class Step:
    """A compiled training step: ``step(state, batch) -> (state, metrics)`` on a `TrainState`.

    The call is the ``jax.jit`` function ``.on_state`` (the state's buffers donated unless
    ``donate=False``), plus, with a plan, laying the arguments out on its mesh; XLA's
    "buffer deleted" error becomes a `DonatedError` that says what to pass instead.

    `arrays` is the same step on the arrays themselves, for code that keeps them apart:
    ``step.arrays(params, opt_state, batch, key=None) -> (params, opt_state, metrics)``
    (``model_state`` after ``params`` when the step has state). It donates nothing unless
    the step was made with ``donate=True``: the arrays are yours.
    """

    def __init__(
        self, what: str, on_arrays: Any, on_state: Any, plan: Plan | None, trees: int, axis: int
    ) -> None:
        self.what, self.on_arrays, self.on_state = what, on_arrays, on_state
        self.plan, self.trees, self.batch_axis = plan, trees, axis
        self.checked = False

    def __call__(self, state: TrainState, batch: Any, *arrays: Any, **kwargs: Any) -> Any:
        if arrays or kwargs:
            warnings.warn(
                f"{self.what}: step(params, opt_state, batch, key) is deprecated; call "
                "step(state, batch) on a TrainState (TrainState.create(params, optimizer, "
                "key=key)), or step.arrays(params, opt_state, batch, key) for the arrays",
                DeprecationWarning,
                stacklevel=2,
            )
            return self.arrays(state, batch, *arrays, **kwargs)
        if self.plan is not None:
            state = place_state(self.plan, state, check_rules=not self.checked)
            self.checked = True
            batch = self.plan.put_batch(batch, self.batch_axis)
        try:
            return self.on_state(state, batch)
        except (ValueError, RuntimeError) as err:
            raise _donated(self.what, err) from err

    def arrays(self, *args: Any, **kwargs: Any) -> Any:
        """The step on the arrays: ``(params, [model_state,] opt_state, batch, key=None)``.

        Example:
          >>> import jax.numpy as jnp, optax, funcgrad as fg
          >>> opt = optax.sgd(0.1)
          >>> step = fg.train.make_step(lambda w, b: jnp.mean((b * w - 2 * b) ** 2), opt)
          >>> w, opt_state = jnp.zeros(()), opt.init(jnp.zeros(()))
          >>> for _ in range(50):
          ...     w, opt_state, metrics = step.arrays(w, opt_state, jnp.ones(4))
          >>> round(float(w), 3)
          2.0
        """
        args = self._place_arrays(args)
        try:
            return self.on_arrays(*args, **kwargs)
        except (ValueError, RuntimeError) as err:
            raise _donated(self.what, err) from err

    def _place_arrays(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        if self.plan is None:
            return args
        trees = self.trees
        check = not self.checked
        placed = [
            self.plan.place(t, check_rules=check and i == 0) for i, t in enumerate(args[:trees])
        ]
        self.checked = True
        batch = self.plan.put_batch(args[trees], self.batch_axis)
        rest = [
            None if a is None else self.plan.place(a, replicated=True) for a in args[trees + 1 :]
        ]
        return (*placed, batch, *rest)

    def lower(self, *args: Any, **kwargs: Any) -> Any:
        """Lower the step for these arguments, either form (`funcgrad.inspect.cost` uses it)."""
        if len(args) == 2 and isinstance(args[0], TrainState):
            state, batch = args
            if self.plan is not None:
                state = place_state(self.plan, state, check_rules=True)
                batch = self.plan.put_batch(batch, self.batch_axis)
            return self.on_state.lower(state, batch)
        return self.on_arrays.lower(*self._place_arrays(args), **kwargs)


def place_state(plan: Plan, state: TrainState, *, check_rules: bool = False) -> TrainState:
    """A `TrainState` on ``plan``'s mesh: parameters and states by its rule, the rest replicated."""
    params, opt_state, model_state = plan.place(
        (state.params, state.opt_state, state.model_state), check_rules=check_rules
    )
    step, key, sums = plan.place((state.step, state.key, state.sums), replicated=True)
    return TrainState(params, opt_state, model_state, step, key, sums, state.key_impl)


def _donations(
    donate: bool | None, arrays: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Donated arguments of the state form and of the array form: the state's buffers are the
    library's (`TrainState.create` copies), the arrays are the caller's unless ``donate=True``."""
    return ((0,) if donate is not False else ()), (arrays if donate else ())


def make_step(
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    *,
    has_aux: bool = False,
    has_state: bool = False,
    with_key: bool | None = None,
    donate: bool | None = None,
    mesh: Mesh | Plan | None = None,
    trainable: Trainable = None,
    microbatches: int = 1,
) -> Step:
    """A jitted training step over any optax optimizer: ``step(state, batch) -> (state, metrics)``.

    ``state`` is a `TrainState` (`TrainState.create`); ``metrics`` is ``{"loss": loss,
    **aux}``, also added to ``state.sums``. ``loss_fn(params, batch)`` returns a scalar, or a
    tuple as `make_update` says; with ``has_state``, ``loss_fn(params, model_state, batch)``.
    With ``with_key=True`` it is also passed ``key=``, drawn per step from ``state.key`` and
    ``state.step`` (dropout). (A loss whose parameter after the batch is required gets the
    key there without being told, for now, with a `DeprecationWarning`.)

    The state's buffers are donated (XLA updates them in place) unless ``donate=False``:
    use the state the step returns; passing a consumed one again raises `DonatedError`.
    `TrainState.create` copies what you give it, so your own arrays stay valid. A batch of
    new shapes recompiles the step, with a warning. ``step.arrays(params, opt_state, batch,
    key=None)`` is the same step on the arrays (see `Step`).

    With ``mesh`` (a `jax.sharding.Mesh`: data parallel; or a `funcgrad.parallel.Plan`:
    FSDP or tensor-parallel rules) the same step runs sharded: parameters and optimizer
    state are laid out by the plan (on the first call, if they are not already), each
    batch is split over the data axis, and XLA's partitioner inserts the collectives.

    ``trainable`` trains only some leaves: a predicate on each leaf's dotted path
    (``lambda path: path.startswith("dense_2")``) or a pytree of bools shaped like the
    parameters (a bool may stand for a whole subtree). The loss still gets the whole tree,
    but it is differentiated with respect to the trainable leaves only, the frozen ones
    closed over, so XLA computes no gradient for them; the optimizer sees the trainable
    leaves alone, so its state holds nothing for the frozen ones (make it with
    ``TrainState.create(..., trainable=trainable)``), and the frozen leaves come back
    bitwise unchanged. (``optax.multi_transform`` with ``optax.set_to_zero`` also keeps no
    state for them, but is handed the whole gradient to throw away; ``jax.lax.stop_gradient``
    in the loss still gives them optimizer state, and weight decay would move them.)
    See `split_trainable`.

    ``microbatches=k`` accumulates the gradient over k parts of each batch, in a
    `jax.lax.scan` inside the step, then applies one update with their mean: for a mean
    loss the parameters equal the full batch's to rounding, while only one part's
    activations are live at a time. Every batch leaf's leading axis must be a multiple of
    k; part ``i`` holds rows ``i, i + k, i + 2k, ...`` (so a batch split over devices
    stays split in every part) and gets the key ``jax.random.fold_in(key, i)``. The
    metrics (the loss and the ``has_aux`` values) are their means over the parts; a model
    state (batch norm) passes through the parts in order. ``k=1`` is the plain step.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> import funcgrad as fg
      >>> def loss_fn(w, batch):
      ...     x, y = batch
      ...     return jnp.mean((x * w - y) ** 2)
      >>> opt = optax.sgd(0.1)
      >>> step = fg.train.make_step(loss_fn, opt)
      >>> state = fg.train.TrainState.create(jnp.array(0.0), opt, key=jax.random.key(0))
      >>> for _ in range(50):
      ...     state, metrics = step(state, (jnp.ones(4), 2 * jnp.ones(4)))
      >>> round(float(state.params), 3)
      2.0
    """
    check_microbatches(microbatches, "make_step")
    check_trainable(trainable, "make_step")
    plan = as_plan(mesh)
    style = key_style(loss_fn, with_key, has_state)
    update = update_fn(
        loss_fn, optimizer, has_aux, has_state, style, plan,
        trainable=trainable, microbatches=microbatches, what="make_step",
    )  # fmt: skip
    watch = _ShapeWatch("make_step")
    on_state = _state_update(update, style is not None)

    def state_step(state: TrainState, batch: Any) -> tuple[TrainState, Metrics]:
        watch(batch)
        return on_state(state, batch)

    donate_state, donate_arrays = _donations(donate, (0, 1, 2) if has_state else (0, 1))
    jit_state = jax.jit(state_step, donate_argnums=donate_state)
    if has_state:

        def stateful(
            params: Any, model_state: Any, opt_state: Any, batch: Any, key: Any = None
        ) -> tuple[Any, Any, Any, Metrics]:
            watch(batch)
            return update(params, model_state, opt_state, batch, key)

        jitted = jax.jit(stateful, donate_argnums=donate_arrays)
        return Step("make_step", jitted, jit_state, plan, 3, 0)

    def step(params: Any, opt_state: Any, batch: Any, key: Any = None) -> tuple[Any, Any, Metrics]:
        watch(batch)
        params, _, opt_state, metrics = update(params, {}, opt_state, batch, key)
        return params, opt_state, metrics

    jitted = jax.jit(step, donate_argnums=donate_arrays)
    return Step("make_step", jitted, jit_state, plan, 2, 0)


def make_multistep(
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    k: int,
    *,
    has_aux: bool = False,
    has_state: bool = False,
    with_key: bool | None = None,
    donate: bool | None = None,
    mesh: Mesh | Plan | None = None,
    trainable: Trainable = None,
    microbatches: int = 1,
) -> Step:
    """``k`` training steps in one compiled call: `jax.lax.scan` over a stacked block of k batches.

    ``multistep(state, batches) -> (state, metrics)`` on a `TrainState`, keys drawn per
    step as `make_step` draws them (same ``loss_fn``, ``with_key``, ``donate``). Every leaf
    of ``batches`` has a leading axis of size ``k``; ``metrics`` holds each step's values,
    stacked (shape ``(k,)``). The result equals k calls of `make_step` on the same batches.
    ``multistep.arrays(params, opt_state, batches, keys=None)`` is the array form (``keys``:
    k PRNG keys, one per step).

    One call costs one dispatch instead of k: on small models, where the per-step
    overhead dominates, this is several times faster. Convolutions in the body take their
    kernel gradient in a form XLA:CPU runs fast in loops (docs/training.md). ``mesh`` shards it as in
    `make_step` (each batch of the block split over the data axis); ``trainable`` and
    ``microbatches`` work as there.

    Example:
      >>> import jax, jax.numpy as jnp, optax, funcgrad as fg
      >>> loss_fn = lambda w, b: jnp.mean((b[0] * w - b[1]) ** 2)
      >>> opt = optax.sgd(0.1)
      >>> run = fg.train.make_multistep(loss_fn, opt, k=50)
      >>> block = (jnp.ones((50, 4)), 2 * jnp.ones((50, 4)))
      >>> state = fg.train.TrainState.create(jnp.array(0.0), opt, key=jax.random.key(0))
      >>> state, metrics = run(state, block)
      >>> metrics["loss"].shape, round(float(state.params), 3)
      ((50,), 2.0)
    """
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"make_multistep: k must be a positive int; got {k!r}")
    check_microbatches(microbatches, "make_multistep")
    check_trainable(trainable, "make_multistep")
    plan = as_plan(mesh)
    style = key_style(loss_fn, with_key, has_state, "make_multistep")
    update = update_fn(
        loss_fn, optimizer, has_aux, has_state, style, plan,
        trainable=trainable, microbatches=microbatches, what="make_multistep",
    )  # fmt: skip
    watch = _ShapeWatch("make_multistep")

    def check(batches: Any) -> None:
        watch(batches)
        sizes = {jnp.shape(a)[0] if jnp.ndim(a) else None for a in jax.tree.leaves(batches)}
        if sizes != {k}:
            raise ShapeError(
                f"make_multistep: every leaf of batches needs a leading axis of k={k}; got {sizes}"
            )

    def state_steps(state: TrainState, batches: Any) -> tuple[TrainState, Metrics]:
        # The loop carries only what the steps change; the keys come from the step index and
        # the running sums, count and step counter are added once after it: a raw scan's body.
        check(batches)

        def body(carry: Any, xs: Any) -> tuple[Any, Any]:
            params, model_state, opt_state = carry
            j, batch = xs
            key = None
            if style is not None:
                key = dataclasses.replace(state, step=state.step + j).step_key()
            params, model_state, opt_state, metrics = update(
                params, model_state, opt_state, batch, key
            )
            bad = nonfinite_step(opt_state)
            take = jnp.asarray(True) if bad is None else bad < 0
            return (params, model_state, opt_state), (metrics, take)

        with loop_body():
            (params, model_state, opt_state), (metrics, take) = jax.lax.scan(
                body,
                (state.params, state.model_state, state.opt_state),
                (jnp.arange(k, dtype=jnp.asarray(state.step).dtype), batches),
            )
        kept = {
            n: jnp.sum(jnp.where(take.reshape(-1, *[1] * (jnp.ndim(v) - 1)), v, 0), axis=0)
            for n, v in metrics.items()
            if n in state.sums
        }
        sums = accumulate(state.sums, kept, jnp.sum(take, dtype=jnp.int32))
        new = dataclasses.replace(
            state, params=params, model_state=model_state, opt_state=opt_state,
            step=state.step + k, sums=sums,
        )  # fmt: skip
        return new, metrics

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

    donate_state, donate_arrays = _donations(donate, (0, 1, 2) if has_state else (0, 1))
    jit_state = jax.jit(state_steps, donate_argnums=donate_state)
    if has_state:

        def stateful(
            params: Any, model_state: Any, opt_state: Any, batches: Any, keys: Any = None
        ) -> Any:
            return run(params, model_state, opt_state, batches, keys)

        jitted = jax.jit(stateful, donate_argnums=donate_arrays)
        return Step("make_multistep", jitted, jit_state, plan, 3, 1)

    def multistep(params: Any, opt_state: Any, batches: Any, keys: Any = None) -> Any:
        params, _, opt_state, metrics = run(params, {}, opt_state, batches, keys)
        return params, opt_state, metrics

    jitted = jax.jit(multistep, donate_argnums=donate_arrays)
    return Step("make_multistep", jitted, jit_state, plan, 2, 1)
