"""`fit`: a loop over `make_step` / `make_multistep` on a `TrainState`, with hooks for the rest.

Logging, evaluation, early stopping, checkpoints and the progress bar are `Hook`s (train/hooks.py).
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from queue import Full, Queue
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcgrad.data import num_examples, permutation
from funcgrad.errors import ConfigError, InputTypeError, ShapeError
from funcgrad.nn.checks import check_key, check_live
from funcgrad.parallel.plan import Mesh, Plan, as_plan
from funcgrad.train import state as states
from funcgrad.train.data import Stream, is_stream
from funcgrad.train.history import History
from funcgrad.train.hooks import (
    Checkpoint,
    EarlyStopping,
    Evaluate,
    Hook,
    LogMetrics,
    Progress,
    Run,
    interval,
)
from funcgrad.train.state import (
    NanGuardState,
    TrainState,
    key_parts,
    unwrap_guard,
    zero_sums,
)
from funcgrad.train.step import (
    call_loss,
    check_microbatches,
    key_style,
    make_multistep,
    make_step,
    place_state,
    update_fn,
)
from funcgrad.train.trainable import Trainable, split_trainable
from funcgrad.train.trainable import check as check_trainable


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What `fit` returns: the final `TrainState`, the history, and why it stopped early (if it did).

    ``state`` is ready for `make_step` or another `fit`; ``params``, ``opt_state`` (the
    optimizer's own state, without the NaN guard `fit` wrapped it in), ``model_state``
    (None without one) and ``step`` are read from it.
    """

    state: TrainState
    history: History
    stopped: str | None = None

    @property
    def params(self) -> Any:
        """The trained parameters (``state.params``)."""
        return self.state.params

    @property
    def opt_state(self) -> Any:
        """The optimizer's state, unwrapped from `fit`'s NaN guard."""
        return unwrap_guard(self.state.opt_state)

    @property
    def model_state(self) -> Any:
        """The model's state (batch-norm statistics), or None for a model without one."""
        return self.state.model_state if self.state.model_state != {} else None

    @property
    def step(self) -> int:
        """The number of steps taken (the step of the first non-finite loss, after a NaN stop)."""
        return int(self.state.step)


def _calls(
    data_key: jax.Array, data: Any, batch_size: int, start: int, total: int, fused: int
) -> Iterator[tuple[int, Any]]:
    """``(k, batches)`` for each compiled call from step ``start`` to ``total``: a block of
    ``fused`` stacked batches while that many steps remain, then single batches.

    Epoch e visits the batches of `batches` ordered by ``fold_in(data_key, e)``. The epoch is
    gathered once and shaped ``(batches, batch_size, ...)``, so a block is a view of it, not
    a stack of copies.
    """
    leaves, treedef = jax.tree.flatten(data)
    n = num_examples(data)
    per_epoch = n // batch_size
    used = per_epoch * batch_size
    epoch, offset = divmod(start, per_epoch)
    current: list[Any] = []

    ahead: dict[int, jax.Array] = {}

    def load(e: int) -> list[Any]:
        # The order is a sort on the device: the next epoch's is dispatched now, so that it
        # is computed while this epoch's steps run instead of stalling the loop each epoch.
        pending = ahead.pop(e, None)
        order_e = permutation(jax.random.fold_in(data_key, e), n) if pending is None else pending
        if (e + 1) * per_epoch < total:
            ahead[e + 1] = permutation(jax.random.fold_in(data_key, e + 1), n)
        order = np.asarray(order_e)
        return [
            leaf[order[:used]].reshape(per_epoch, batch_size, *np.shape(leaf)[1:])
            for leaf in leaves
        ]

    step = start
    while step < total:
        k = fused if fused > 1 and total - step >= fused else 1
        if k == 1:  # the common case, kept short: one view per leaf
            if offset == 0 or not current:
                current = load(epoch)
            yield 1, jax.tree.unflatten(treedef, [leaf[offset] for leaf in current])
            offset, step = offset + 1, step + 1
            if offset == per_epoch:
                epoch, offset = epoch + 1, 0
            continue
        parts = []
        need = k
        while need:
            if offset == 0 or not current:
                current = load(epoch)
            take = min(need, per_epoch - offset)
            parts.append([leaf[offset : offset + take] for leaf in current])
            need -= take
            offset += take
            if offset == per_epoch:
                epoch, offset = epoch + 1, 0
        if len(parts) == 1:
            block = parts[0]
        else:
            stack = lambda xs: (np if isinstance(xs[0], np.ndarray) else jnp).concatenate(xs)
            block = [stack(list(xs)) for xs in zip(*parts, strict=True)]
        yield k, jax.tree.unflatten(treedef, block)
        step += k


def _process_rows(
    calls: Iterator[tuple[int, Any, Any]], batch_size: int
) -> Iterator[tuple[int, Any, Any]]:
    """This process's rows of every global batch (several processes: each keeps its slice)."""
    count, index = jax.process_count(), jax.process_index()
    if count == 1:
        yield from calls
        return
    if batch_size % count:
        raise ConfigError(
            f"fit: global batch size {batch_size} does not divide over {count} processes"
        )
    rows = slice(index * batch_size // count, (index + 1) * batch_size // count)
    for k, batch, position in calls:
        cut = (lambda a: a[rows]) if k == 1 else (lambda a: a[:, rows])
        yield k, jax.tree.map(cut, batch), position


def _prefetched(stream: Iterator[tuple[int, Any, Any]], depth: int) -> Iterator[Any]:
    """Yield from ``stream`` while a background thread slices (or draws) and copies the next
    ``depth`` batches to the device; each keeps the data position that came with it."""
    queue: Queue[Any] = Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for k, batch, position in stream:
                if not put((k, jax.device_put(batch), position)):
                    return  # the consumer has gone: fit stopped early
        except BaseException as err:  # surfaced in the consumer
            put(err)
        put(done)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := queue.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


_MOVED = {
    "eval_data": "fg.train.Evaluate(data, metrics, every=, batch_size=)",
    "metrics": "fg.train.Evaluate(data, metrics, every=, batch_size=)",
    "eval_every": "fg.train.Evaluate(data, metrics, every=, batch_size=)",
    "eval_batch_size": "fg.train.Evaluate(data, metrics, every=, batch_size=)",
    "early_stopping": "fg.train.EarlyStopping(...) after the Evaluate hook",
    "log_every": "fg.train.LogMetrics(every=)",
    "checkpoint_dir": "fg.train.Checkpoint(dir, every, keep=, resume=)",
    "checkpoint_every": "fg.train.Checkpoint(dir, every, keep=, resume=)",
    "keep": "fg.train.Checkpoint(dir, every, keep=, resume=)",
    "resume": "fg.train.Checkpoint(dir, every, keep=, resume=)",
    "progress": "fg.train.Progress() (in default_hooks(); leave it out for no bar)",
}


def _legacy_hooks(old: dict[str, Any], hooks: Sequence[Hook]) -> list[Hook]:
    """The hooks the deprecated keywords of `fit` spell, then ``hooks`` (same class replaces)."""
    unknown = sorted(set(old) - set(_MOVED))
    if unknown:
        raise InputTypeError(
            f"fit: unexpected keyword arguments {unknown}; its options are its own keywords and "
            "the hooks' arguments (docs/training.md)"
        )
    names = ", ".join(f"{k}= → {_MOVED[k]}" for k in old)
    warnings.warn(
        f"fit: these keywords are deprecated; pass hooks instead: {names}; e.g. "
        "hooks=[*fg.train.default_hooks(), fg.train.Evaluate(test_data)]",
        DeprecationWarning,
        stacklevel=3,
    )
    built: list[Hook] = [LogMetrics(old.get("log_every"))]
    if old.get("eval_data") is not None:
        built.append(
            Evaluate(
                old["eval_data"], old.get("metrics"), old.get("eval_every"),
                old.get("eval_batch_size"),
            )
        )  # fmt: skip
    if old.get("early_stopping") is not None:
        built.append(old["early_stopping"])
    if old.get("checkpoint_dir") is not None:
        every = old.get("checkpoint_every") or 0
        built.append(
            Checkpoint(old["checkpoint_dir"], every, keep=old.get("keep", 3),
                       resume=old.get("resume", True))
        )  # fmt: skip
    chosen = [h for h in built if not any(type(u) is type(h) for u in hooks)]
    bar = [Progress()] if old.get("progress", True) else []
    return [*chosen, *hooks, *bar]


def default_hooks() -> list[Hook]:
    """The hooks `fit` runs when given none: ``[LogMetrics(), Progress()]``.

    Add to them in one line: ``hooks=[*fg.train.default_hooks(), fg.train.Evaluate(test)]``.

    Example:
      >>> import funcgrad as fg
      >>> [type(h).__name__ for h in fg.train.default_hooks()]
      ['LogMetrics', 'Progress']
    """
    return [LogMetrics(), Progress()]


def _intervals(hooks: list[Hook], log: int, fused: int) -> list[int]:
    """Each hook's interval in steps, a multiple of ``fused`` (0: only at the end).

    Not set (None): `LogMetrics` and `Progress` log at ``log``, `EarlyStopping` checks after
    each evaluation, every other hook runs at the end only. The hooks are not changed.
    """
    eval_every = next((interval(h.every, 0, fused) for h in hooks if isinstance(h, Evaluate)), None)
    result = []
    for hook in hooks:
        if isinstance(hook, EarlyStopping):
            if eval_every is None:
                raise ConfigError(
                    "fit: EarlyStopping watches evaluation scores, but no Evaluate hook comes "
                    "before it; pass hooks=[..., fg.train.Evaluate(data), fg.train.EarlyStopping()]"
                )
            result.append(interval(hook.every, eval_every, fused))
        elif isinstance(hook, (LogMetrics, Progress)):
            result.append(interval(hook.every, log, fused))
        else:
            result.append(interval(hook.every, 0, fused))
    return result


def fit(
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    params: Any,
    data: Any,
    *,
    key: jax.Array,
    batch_size: int | None = None,
    steps: int | None = None,
    epochs: int | None = None,
    hooks: Sequence[Hook] | None = None,
    model_state: Any = None,
    opt_state: Any = None,
    has_aux: bool = False,
    with_key: bool | None = None,
    fused: int = 1,
    prefetch: int = 0,
    nan_guard: bool = True,
    mesh: Mesh | Plan | None = None,
    trainable: Trainable = None,
    microbatches: int = 1,
    **deprecated: Any,
) -> FitResult:
    """Train ``params`` on ``data`` with ``optimizer`` for ``steps`` or ``epochs``, running ``hooks``.

    A loop over `make_step` (or `make_multistep` with ``fused``) on a `TrainState`; the
    rest is hooks: `LogMetrics`, `Evaluate`, `EarlyStopping`, `Checkpoint`, `Progress`, or
    your own. Without ``hooks`` it runs `default_hooks` (``[LogMetrics(), Progress()]``);
    a list is run as given, in order (a `LogMetrics` is added first if it has none: it
    keeps the history and stops the run at a NaN). Add to the defaults in one line:
    ``hooks=[*fg.train.default_hooks(), fg.train.Evaluate(test_data, {"accuracy": acc})]``.
    `fit` changes neither the hooks nor any array you pass. docs/training.md shows the
    same loop written by hand.

    Args:
      loss_fn: ``loss_fn(params, batch)``; with ``with_key=True`` also ``key=``, one per
        step (dropout), drawn deterministically from ``key``; with ``model_state``
        given, ``loss_fn(params, model_state, batch)`` returning ``(loss, new_state)``.
        ``has_aux``: it returns ``(loss, aux_dict)`` (or ``(loss, (new_state, aux))``).
      optimizer: any optax ``GradientTransformation``.
      params: initial parameters (copied: yours stay valid). ``opt_state`` defaults to
        ``optimizer.init(params)``.
      data: pytree of arrays (NumPy or JAX) with a leading example axis (a dict, list or
        tuple is always one): each epoch visits every full batch once, in an order drawn
        from ``key``. Or an iterable of batches (a generator, a grain dataset or
        `DataLoader`; a list of batches as ``iter(batches)``), each a pytree of the first
        one's structure, shapes and dtypes; running out before ``steps`` is an error, and an
        epoch is one pass over ``iter(data)`` (which must restart it, and ``len(data)`` say
        how many batches). `Checkpoint` saves its position where the iterator has
        ``get_state``/``set_state`` (grain's have), so a resume continues from the same
        example; a generator resumes through `resume_by_skipping`.
      key: the run's one seed (``jax.random.key``): data order and dropout keys derive from it.
      batch_size: examples per batch, for arrays; for an iterable, optional (taken from
        the first batch; if given, it must match).
      steps, epochs: give exactly one of ``steps`` and ``epochs``.
      hooks: what runs besides the steps (above).
      fused: run this many steps per compiled call (`make_multistep`); hook intervals
        are rounded up to multiples of it.
      prefetch: slice and copy this many batches to the device ahead, in a background
        thread (0: none). The batches and results are the same either way.
      nan_guard: wrap the optimizer in `nan_guard`: at the first non-finite loss or
        gradient, stop (at the next logging point) with a `RuntimeWarning` naming the step,
        and return the parameters from before it.
      mesh: run sharded, as `make_step` does: a `jax.sharding.Mesh` (data parallel) or a
        `funcgrad.parallel.Plan`. With several processes (`funcgrad.parallel.initialize`),
        every process passes the same ``data`` and ``key`` and keeps its own rows of each batch.
      trainable: train only these leaves (a predicate on the dotted path, or a pytree of
        bools), as in `make_step`; the others stay bitwise unchanged and the optimizer
        state (and the checkpoints) hold nothing for them.
      microbatches: accumulate each step's gradient over this many parts of the batch
        (`make_step`); ``batch_size`` must be a multiple of it.

    The keywords ``eval_data``, ``metrics``, ``eval_every``, ``eval_batch_size``,
    ``early_stopping``, ``log_every``, ``checkpoint_dir``, ``checkpoint_every``, ``keep``,
    ``resume`` and ``progress`` still work, with a `DeprecationWarning`: they are the
    hooks' arguments now.

    Returns:
      A `FitResult`: the final ``state`` (and its ``params``, ``opt_state``,
      ``model_state``, ``step``), the ``history``, and ``stopped`` (why it stopped early, or None).

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, optax, funcgrad as fg
      >>> x = np.linspace(-1, 1, 64, dtype=np.float32)[:, None]
      >>> loss_fn = lambda w, b: jnp.mean((b[0] * w - 3 * b[0]) ** 2)
      >>> result = fg.train.fit(loss_fn, optax.sgd(0.5), jnp.zeros(()), (x,),
      ...                       key=jax.random.key(0), batch_size=16, epochs=20, hooks=[])
      >>> round(float(result.params), 3), result.step
      (3.0, 80)
    """
    check_key(key, "fit(key=)")
    if (steps is None) == (epochs is None):
        raise ConfigError("fit: give exactly one of steps= and epochs=")
    source = Stream(data, epochs=epochs is not None) if is_stream(data) else None
    if source is not None:
        per_epoch = source.per_epoch() if epochs is not None else steps or 1
        sizes = {int(np.shape(a)[0]) if np.ndim(a) else 0 for a in jax.tree.leaves(source.first)}
        if len(sizes) != 1 or batch_size not in (None, *sizes):
            raise ShapeError(
                f"fit: every leaf of a streamed batch needs the same leading (batch) axis"
                f"{'' if batch_size is None else f' of batch_size={batch_size}'}; the first "
                f"batch's leaves have sizes {sorted(sizes)}"
            )
        batch_size = sizes.pop()
        first_batch = source.first
    else:
        n = num_examples(data)
        if not isinstance(batch_size, int) or not 1 <= batch_size <= n:
            raise ConfigError(
                f"fit: batch_size must be in [1, {n}] (the data set size); got {batch_size!r}"
            )
        per_epoch = n // batch_size
        first_batch = jax.tree.map(lambda a: a[:batch_size], data)
    total = steps if steps is not None else int(epochs) * per_epoch  # type: ignore[arg-type]
    if not isinstance(fused, int) or fused < 1:
        raise ConfigError(f"fit: fused must be a positive int; got {fused!r}")
    check_microbatches(microbatches, "fit")
    check_trainable(trainable, "fit")
    if batch_size % microbatches:
        raise ConfigError(
            f"fit: microbatches={microbatches} splits each batch into equal parts, but "
            f"batch_size={batch_size} is not a multiple of it"
        )
    has_state = model_state is not None
    check_live((params, model_state, opt_state), "fit")
    plan = as_plan(mesh)
    if deprecated:
        all_hooks = _legacy_hooks(deprecated, list(hooks or ()))
    else:
        all_hooks = default_hooks() if hooks is None else list(hooks)
        if not any(isinstance(h, LogMetrics) for h in all_hooks):
            all_hooks.insert(0, LogMetrics())
    if nan_guard and not isinstance(jax.eval_shape(optimizer.init, params), NanGuardState):
        optimizer = states.nan_guard(optimizer)
    if opt_state is not None and nan_guard and not isinstance(opt_state, NanGuardState):
        zero = jnp.zeros((), jnp.int32)
        opt_state = NanGuardState(opt_state, zero, zero - 1)
    style = key_style(loss_fn, with_key, has_state, "fit")
    with warnings.catch_warnings():  # key_style has said it once, in the caller's words
        warnings.simplefilter("ignore", DeprecationWarning)
        options = {
            "has_aux": has_aux, "has_state": has_state, "mesh": plan, "with_key": with_key,
            "trainable": trainable, "microbatches": microbatches,
        }  # fmt: skip
        step = make_step(loss_fn, optimizer, **options)  # type: ignore[arg-type]
        multi = make_multistep(loss_fn, optimizer, fused, **options) if fused > 1 else None  # type: ignore[arg-type]
    update = update_fn(
        loss_fn, optimizer, has_aux, has_state, style, None,
        trainable=trainable, microbatches=microbatches, what="fit",
    )  # fmt: skip

    # One copy up front: the step donates its buffers, and the caller's arrays must survive fit.
    params, model_state, opt_state = jax.tree.map(
        jnp.copy,
        (
            params,
            {} if model_state is None else model_state,
            optimizer.init(split_trainable(params, trainable, "fit")[0])
            if opt_state is None
            else opt_state,
        ),
    )
    shapes = jax.eval_shape(
        lambda p, s, o, b: update(p, s, o, b, jax.random.key(0) if style else None)[3],
        params, model_state, opt_state, first_batch,
    )  # fmt: skip
    key_data, key_impl = key_parts(key)
    state = TrainState(
        params, opt_state, model_state, jnp.asarray(0, jnp.int32), key_data, zero_sums(shapes),
        key_impl,
    )  # fmt: skip
    run = Run(
        state=state, step=0, total=total, batch_size=batch_size, has_state=has_state,
        loss=_loss_only(loss_fn, has_aux, has_state, style), plan=plan, data=source,
    )  # fmt: skip
    bars: list[Progress] = [h for h in all_hooks if isinstance(h, Progress)]
    all_hooks = [*(h for h in all_hooks if not isinstance(h, Progress)), *bars]  # bar last
    every = _intervals(all_hooks, _default_log_every(per_epoch, fused), fused)

    for hook in all_hooks:
        hook.start(run)
    if plan is not None:
        run.state = place_state(plan, run.state, check_rules=True)
    data_key = jax.random.fold_in(key, 0)
    if source is not None:
        stream = source.calls(run.step, total, fused)
    else:
        stream = (
            (k, b, None) for k, b in _calls(data_key, data, batch_size, run.step, total, fused)
        )
    if plan is not None:
        stream = _process_rows(stream, batch_size)
    if prefetch:
        stream = _prefetched(stream, prefetch)
    due = [(h, e) for h, e in zip(all_hooks, every, strict=True) if e > 0]
    next_event = _next_event(run.step, due)
    first = True
    try:
        while run.step < total and run.stopped is None:
            k, batch, position = next(stream)
            run.state, _ = (multi if k > 1 else step)(run.state, batch)  # type: ignore[misc]
            run.step += k
            if source is not None:
                source.done(position)
            if first:
                first = False
                for bar in bars:
                    bar.first_call_done(run)
            if run.step >= next_event:
                for hook, hook_every in due:
                    if run.step % hook_every == 0 and run.stopped is None:
                        hook.after_step(run)
                next_event = _next_event(run.step, due)
        run.final_rows = len(run.history.rows)
        for hook in all_hooks:
            hook.end(run)
    finally:
        for hook in all_hooks:
            hook.close()
    if run.nonfinite:
        _warn_nonfinite(run.step, None if source else data, data_key, batch_size)
    return FitResult(run.state, run.history, run.stopped)


def _warn_nonfinite(bad: int, data: Any, data_key: jax.Array, batch_size: int) -> None:
    """Say, as a `RuntimeWarning`, at which step the loss went non-finite, and whether that
    step's batch held non-finite inputs (``data`` None: streamed, not drawn again)."""
    batch = None if data is None else next(_calls(data_key, data, batch_size, bad, bad + 1, 1))[1]
    floats = [
        np.asarray(a)
        for a in jax.tree.leaves(batch)
        if np.issubdtype(np.asarray(a).dtype, np.inexact)
    ]
    if any(not np.all(np.isfinite(a)) for a in floats):
        cause = "the batch of that step holds non-finite inputs (NaN or inf in the data)"
    elif floats:
        cause = "the batch of that step is finite, so the model diverged (lower the learning rate?)"
    else:
        cause = "the model diverged (lower the learning rate?)"
    warnings.warn(
        f"fit: the loss or gradients were not finite at step {bad}: {cause}; fit stopped and "
        "returned the parameters from before that step (result.stopped says the same)",
        RuntimeWarning,
        stacklevel=3,
    )


def _default_log_every(per_epoch: int, fused: int) -> int:
    """About an epoch, 10 to 100 steps, a multiple of ``fused`` (rounded down, at least one call)."""
    steps = min(max(per_epoch, 10), 100)
    return max(fused, steps // fused * fused)


def _next_event(step: int, due: list[tuple[Hook, int]]) -> int:
    """The next step at which some hook is due (never, if none is)."""
    return min((step // e + 1) * e for _, e in due) if due else 1 << 62


def _loss_only(
    loss_fn: Callable[..., Any], has_aux: bool, has_state: bool, style: str | None
) -> Callable[..., Any]:
    """``loss_fn`` as an evaluation metric: key None (dropout off), the loss alone."""

    def loss(*args: Any) -> Any:
        out = call_loss(loss_fn, style, args, None)
        return out[0] if (has_aux or has_state) else out

    return loss
