"""`fit`: a loop over `make_step` / `make_multistep` on a `TrainState`, with hooks for the rest.

Logging, evaluation, early stopping, checkpoints and the progress bar are `Hook`s (train/hooks.py).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from queue import Full, Queue
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcgrad.data import num_examples, permutation
from funcgrad.errors import ConfigError
from funcgrad.parallel.plan import Mesh, Plan, as_plan
from funcgrad.train import state as states
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
from funcgrad.train.state import NanGuardState, TrainState, key_parts, unwrap_guard, zero_sums
from funcgrad.train.step import make_multistep, make_step, make_update, place_state, takes_key


@dataclasses.dataclass
class FitResult:
    """What `fit` returns: the final state, the history, and why it stopped early (if it did).

    ``opt_state`` is the optimizer's own state (without the NaN guard `fit` wrapped it in);
    ``state`` is the whole `TrainState`, ready for `make_step` or another `fit`.
    """

    params: Any
    opt_state: Any
    model_state: Any
    history: History
    step: int
    stopped: str | None = None
    state: TrainState | None = None


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
    per_epoch = num_examples(data) // batch_size
    used = per_epoch * batch_size
    epoch, offset = divmod(start, per_epoch)
    current: list[Any] = []

    def load(e: int) -> list[Any]:
        order = np.asarray(permutation(jax.random.fold_in(data_key, e), len(leaves[0])))
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


def _process_rows(calls: Iterator[tuple[int, Any]], batch_size: int) -> Iterator[tuple[int, Any]]:
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
    for k, batch in calls:
        cut = (lambda a: a[rows]) if k == 1 else (lambda a: a[:, rows])
        yield k, jax.tree.map(cut, batch)


def _prefetched(stream: Iterator[tuple[int, Any]], depth: int) -> Iterator[Any]:
    """Yield from ``stream`` while a background thread slices and copies the next ``depth``
    batches to the device."""
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
            for k, batch in stream:
                if not put((k, jax.device_put(batch))):
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


def fit(
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    params: Any,
    data: Any,
    *,
    key: jax.Array,
    batch_size: int,
    steps: int | None = None,
    epochs: int | None = None,
    model_state: Any = None,
    opt_state: Any = None,
    has_aux: bool = False,
    eval_data: Any = None,
    metrics: Mapping[str, Callable[..., Any]] | None = None,
    eval_every: int | None = None,
    eval_batch_size: int | None = None,
    early_stopping: EarlyStopping | None = None,
    log_every: int | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    keep: int = 3,
    resume: bool = True,
    fused: int = 1,
    prefetch: int = 0,
    nan_guard: bool = True,
    progress: bool = True,
    mesh: Mesh | Plan | None = None,
    hooks: Sequence[Hook] = (),
) -> FitResult:
    """Train ``params`` on ``data`` with ``optimizer`` for ``steps`` or ``epochs``.

    A loop over `make_step` (or `make_multistep` with ``fused``) on a `TrainState`; the
    rest is hooks (`LogMetrics`, `Evaluate`, `EarlyStopping`, `Checkpoint`, `Progress`),
    built from the arguments below. ``hooks`` adds your own; one of the same class as a
    built-in replaces it. docs/training.md shows the same loop written by hand.

    Args:
      loss_fn: ``loss_fn(params, batch)``; with a third parameter it also gets a PRNG key
        per step (dropout), drawn deterministically from ``key``; with ``model_state``
        given, ``loss_fn(params, model_state, batch[, key])`` returning ``(loss, new_state)``.
        ``has_aux``: it returns ``(loss, aux_dict)`` (or ``(loss, (new_state, aux))``).
      optimizer: any optax ``GradientTransformation``.
      params: initial parameters. ``opt_state`` defaults to ``optimizer.init(params)``.
      data: pytree of arrays (NumPy or JAX) with a leading example axis. Each epoch
        visits every full batch once, in an order drawn from ``key``.
      key: the run's one seed: data order and dropout keys derive from it.
      batch_size, steps, epochs: give exactly one of ``steps`` and ``epochs``.
      eval_data, metrics, eval_every: every ``eval_every`` steps (default: only at the
        end), the mean of ``eval_loss`` and each ``metrics[name](params, batch)`` (with
        state: ``(params, model_state, batch)``) over ``eval_data``, into the history.
      early_stopping: stop when an evaluation metric stops improving.
      log_every: steps between history rows and progress-bar updates. The default, about
        one row an epoch (at least 10 and at most 100 steps apart), does not depend on
        the run's length, so a resumed or extended run logs at the same steps. Reading
        metrics waits for the device, so it is not done every step.
      checkpoint_dir, checkpoint_every, keep, resume: save the `TrainState` and the
        history every ``checkpoint_every`` steps (default: only at the end), keeping the
        newest ``keep``; with ``resume``, continue from the newest checkpoint there: the
        parameters are bitwise those of an uninterrupted run (on CPU) and so is the history.
        `load_params` reads the trained parameters back for inference.
      fused: run this many steps per compiled call (`make_multistep`); logging,
        evaluation and checkpoint intervals are rounded up to multiples of it.
      prefetch: slice and copy this many batches to the device ahead, in a background
        thread (0: none). The batches and results are the same either way.
      nan_guard: wrap the optimizer in `nan_guard`: stop at the first non-finite loss or
        gradient, naming the step, and return the parameters from before it.
      progress: show a progress bar (loss, evaluation, compile time apart from stepping).
      mesh: run sharded, as `make_step` does: a `jax.sharding.Mesh` (data parallel) or a
        `funcgrad.parallel.Plan`. With several processes (`funcgrad.parallel.initialize`),
        every process passes the same ``data`` and ``key`` and keeps its own rows of each batch.
      hooks: more `Hook`s, run after the built-in ones (before the progress bar).

    Returns:
      A `FitResult` with the final ``params``, ``opt_state``, ``model_state``, ``history``,
      ``step``, ``stopped`` (why it stopped early, or None) and the whole ``state``.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, optax, funcgrad as fg
      >>> x = np.linspace(-1, 1, 64, dtype=np.float32)[:, None]
      >>> loss_fn = lambda w, b: jnp.mean((b[0] * w - 3 * b[0]) ** 2)
      >>> result = fg.train.fit(loss_fn, optax.sgd(0.5), jnp.zeros(()), (x,),
      ...                       key=jax.random.key(0), batch_size=16, epochs=20, progress=False)
      >>> round(float(result.params), 3), result.step
      (3.0, 80)
    """
    n = num_examples(data)
    if not isinstance(batch_size, int) or not 1 <= batch_size <= n:
        raise ConfigError(
            f"fit: batch_size must be in [1, {n}] (the data set size); got {batch_size!r}"
        )
    per_epoch = n // batch_size
    if (steps is None) == (epochs is None):
        raise ConfigError("fit: give exactly one of steps= and epochs=")
    total = steps if steps is not None else int(epochs) * per_epoch  # type: ignore[arg-type]
    if not isinstance(fused, int) or fused < 1:
        raise ConfigError(f"fit: fused must be a positive int; got {fused!r}")
    has_state = model_state is not None
    plan = as_plan(mesh)
    if nan_guard and not isinstance(jax.eval_shape(optimizer.init, params), NanGuardState):
        optimizer = states.nan_guard(optimizer)
    if opt_state is not None and nan_guard and not isinstance(opt_state, NanGuardState):
        zero = jnp.zeros((), jnp.int32)
        opt_state = NanGuardState(opt_state, zero, zero - 1)
    step_options = {"has_aux": has_aux, "has_state": has_state, "mesh": plan}
    step = make_step(loss_fn, optimizer, **step_options)  # type: ignore[arg-type]
    multi = make_multistep(loss_fn, optimizer, fused, **step_options) if fused > 1 else None  # type: ignore[arg-type]

    # One copy up front: the step donates its buffers, and the caller's arrays must survive fit.
    params, model_state, opt_state = jax.tree.map(
        jnp.copy,
        (
            params,
            {} if model_state is None else model_state,
            optimizer.init(params) if opt_state is None else opt_state,
        ),
    )
    with_key = takes_key(loss_fn, has_state)
    update = make_update(loss_fn, optimizer, has_aux=has_aux, has_state=has_state)
    first_batch = jax.tree.map(lambda a: a[:batch_size], data)
    shapes = jax.eval_shape(
        lambda p, s, o, b: update(p, s, o, b, jax.random.key(0) if with_key else None)[3],
        params, model_state, opt_state, first_batch,
    )  # fmt: skip
    key_data, key_impl = key_parts(key)
    state = TrainState(
        params, opt_state, model_state, jnp.asarray(0, jnp.int32), key_data, zero_sums(shapes),
        key_impl,
    )  # fmt: skip
    run = Run(state=state, step=0, total=total)
    every = {
        "log": interval(log_every, _default_log_every(per_epoch, fused), fused),
        "eval": interval(eval_every, 0, fused),
        "checkpoint": interval(checkpoint_every, 0, fused),
    }
    built: list[Hook] = [LogMetrics(every["log"])]
    if eval_data is not None:
        loss_only = _loss_only(loss_fn, has_aux, has_state, with_key)
        built.append(
            Evaluate(
                eval_data,
                metrics,
                every["eval"],
                eval_batch_size or batch_size,
                loss_only,
                has_state,
            )
        )
    if early_stopping is not None:
        early_stopping.every = every["eval"]
        built.append(early_stopping)
    if checkpoint_dir is not None:
        built.append(
            Checkpoint(checkpoint_dir, every["checkpoint"], keep=keep, resume=resume, mesh=plan)
        )
    bar = Progress(every["log"]) if progress else None
    chosen = [h for h in built if not any(type(u) is type(h) for u in hooks)]
    all_hooks = [*chosen, *hooks, *([bar] if bar is not None else [])]

    for hook in all_hooks:
        hook.start(run)
    if plan is not None:
        run.state = place_state(plan, run.state, check_rules=True)
    stream = _calls(jax.random.fold_in(key, 0), data, batch_size, run.step, total, fused)
    if plan is not None:
        stream = _process_rows(stream, batch_size)
    if prefetch:
        stream = _prefetched(stream, prefetch)
    due = [(h, h.every) for h in all_hooks if h.every > 0]
    next_event = _next_event(run.step, due)
    first = True
    try:
        while run.step < total and run.stopped is None:
            k, batch = next(stream)
            run.state, _ = (multi if k > 1 else step)(run.state, batch)  # type: ignore[misc]
            run.step += k
            if first:
                first = False
                if bar is not None:
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
        if bar is not None and bar.bar is not None:
            bar.bar.close()
    final = run.state
    return FitResult(
        final.params,
        unwrap_guard(final.opt_state) if nan_guard else final.opt_state,
        final.model_state if has_state else None,
        run.history,
        run.step,
        run.stopped,
        final,
    )


def _default_log_every(per_epoch: int, fused: int) -> int:
    """About an epoch, 10 to 100 steps, a multiple of ``fused`` (rounded down, at least one call)."""
    steps = min(max(per_epoch, 10), 100)
    return max(fused, steps // fused * fused)


def _next_event(step: int, due: list[tuple[Hook, int]]) -> int:
    """The next step at which some hook is due (never, if none is)."""
    return min((step // e + 1) * e for _, e in due) if due else 1 << 62


def _loss_only(
    loss_fn: Callable[..., Any], has_aux: bool, has_state: bool, with_key: bool
) -> Callable[..., Any]:
    """``loss_fn`` as an evaluation metric: no key, the loss alone."""

    def loss(*args: Any) -> Any:
        out = loss_fn(*args, None) if with_key else loss_fn(*args)
        return out[0] if (has_aux or has_state) else out

    return loss
