"""`fit`: the training loop researchers write by hand, with progress, evaluation, NaN guard and checkpoints.

The step stays a jitted function; the loop only feeds batches and reads metrics at logging points.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from queue import Full, Queue
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from funcgrad.errors import ConfigError
from funcgrad.nn.conv import loop_body
from funcgrad.parallel.plan import Mesh, Plan, as_plan
from funcgrad.train import checkpoint
from funcgrad.train.data import batches, num_examples, process_rows
from funcgrad.train.history import History
from funcgrad.train.step import make_update


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Stop when ``monitor`` (an evaluation metric) has not improved for ``patience`` evaluations."""

    monitor: str = "eval_loss"
    patience: int = 3
    mode: str = "min"
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ConfigError(f"EarlyStopping: mode must be 'min' or 'max'; got {self.mode!r}")


@dataclasses.dataclass
class FitResult:
    """What `fit` returns: the final state, the history, and why it stopped early (if it did)."""

    params: Any
    opt_state: Any
    model_state: Any
    history: History
    step: int
    stopped: str | None = None


def _takes_key(loss_fn: Callable[..., Any], has_state: bool) -> bool:
    try:
        sig = inspect.signature(loss_fn)
    except (TypeError, ValueError):
        return False
    positional = [
        p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return len(positional) > (3 if has_state else 2)


def _all_finite(tree: Any) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _make_step(update: Callable[..., Any], nan_guard: bool, takes_key: bool) -> Callable[..., Any]:
    """One step over the carried state ``(params, model_state, opt_state, halted, counter,
    sums, first_bad)``. Metrics are summed on the device and read only at logging points.

    With ``nan_guard``, a step whose loss or new parameters are not finite changes nothing
    and sets ``halted``; later steps change nothing either, so the last finite parameters
    are kept without copying them every step, and ``first_bad`` records the step.
    """

    def step(carry: tuple[Any, ...], batch: Any, base_key: Any) -> tuple[Any, ...]:
        params, model_state, opt_state, halted, counter, sums, first_bad = carry
        key = jax.random.fold_in(base_key, counter) if takes_key else None
        new_params, new_state, new_opt, metrics = update(params, model_state, opt_state, batch, key)
        if nan_guard:
            ok = jnp.isfinite(metrics["loss"]) & _all_finite(new_params)
            take = ok & ~halted
            # One conditional for the whole state: per-leaf selects cost a kernel each on CPU.
            new_params, new_state, new_opt = jax.lax.cond(
                take,
                lambda: (new_params, new_state, new_opt),
                lambda: (params, model_state, opt_state),
            )
            first_bad = jnp.where(~ok & ~halted, counter, first_bad)
            halted = halted | ~ok
        else:
            take = jnp.asarray(True)
        values = {**metrics, "steps": jnp.ones((), jnp.float32)}
        sums = {k: sums[k] + jnp.where(take, v, 0).astype(sums[k].dtype) for k, v in values.items()}
        return (new_params, new_state, new_opt, halted, counter + 1, sums, first_bad)

    return step


def _epoch_batches(data_key: jax.Array, data: Any, batch_size: int, start: int) -> Iterator[Any]:
    """Batches from global step ``start`` on: epoch e is `batches` ordered by fold_in(key, e)."""
    per_epoch = num_examples(data) // batch_size
    epoch, offset = divmod(start, per_epoch)
    while True:
        epoch_key = jax.random.fold_in(data_key, epoch)
        yield from itertools.islice(batches(epoch_key, data, batch_size), offset, None)
        epoch, offset = epoch + 1, 0


def _prefetched(stream: Iterator[Any], depth: int) -> Iterator[Any]:
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
            for item in stream:
                if not put(jax.device_put(item)):
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


def _mean_over(
    fns: Mapping[str, Callable[..., Any]], data: Any, batch_size: int, args: tuple[Any, ...]
) -> dict[str, float]:
    n = num_examples(data)
    totals: dict[str, float] = dict.fromkeys(fns, 0.0)
    for start in range(0, n, batch_size):
        batch = jax.tree.map(lambda a, s=start: a[s : s + batch_size], data)
        size = min(batch_size, n - start)
        for name, fn in fns.items():
            totals[name] += float(fn(*args, batch)) * size
    return {k: v / n for k, v in totals.items()}


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
) -> FitResult:
    """Train ``params`` on ``data`` with ``optimizer`` for ``steps`` or ``epochs``.

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
      eval_data, metrics, eval_every: every ``eval_every`` steps (and at the end), the
        mean of ``eval_loss`` and each ``metrics[name](params, batch)`` (with state:
        ``(params, model_state, batch)``) over ``eval_data``, recorded in the history.
      early_stopping: stop when an evaluation metric stops improving.
      log_every: steps between history rows and progress-bar updates (default: 1% of
        the run). Reading metrics synchronises with the device, so it is not done every step.
      checkpoint_dir, checkpoint_every, keep, resume: save parameters, optimizer and model
        state, the key and the history every ``checkpoint_every`` steps and at the end,
        keeping the newest ``keep``; with ``resume``, continue from the newest checkpoint
        there, giving bitwise the same result on CPU as an uninterrupted run.
      fused: run this many steps per compiled call (`make_multistep`); logging,
        evaluation and checkpoint intervals are rounded up to multiples of it.
      prefetch: slice and copy this many batches to the device ahead, in a background
        thread (0: none). The batches and results are the same either way.
      nan_guard: stop at the first non-finite loss or parameter, naming the step, and
        return the last finite parameters.
      progress: show a progress bar (loss, steps/s).
      mesh: run sharded, as `make_step` does: a `jax.sharding.Mesh` (data parallel) or a
        `funcgrad.parallel.Plan`. With several processes (`funcgrad.parallel.initialize`),
        every process passes the same ``data`` and ``key`` and keeps its own rows of each batch.

    Returns:
      A `FitResult` with the final ``params``, ``opt_state``, ``model_state``, ``history``,
      ``step``, and ``stopped`` (why it stopped early, or None).

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
    if fused < 1:
        raise ConfigError(f"fit: fused must be a positive int; got {fused}")
    has_state = model_state is not None
    model_state = {} if model_state is None else model_state
    opt_state = optimizer.init(params) if opt_state is None else opt_state
    takes_key = _takes_key(loss_fn, has_state)
    data_key, step_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)

    def every(value: int | None, default: int) -> int:
        interval = default if value is None else value
        return max(fused, math.ceil(max(interval, 1) / fused) * fused)

    log_every = every(log_every, max(1, total // 100))
    eval_every = every(eval_every, total) if eval_data is not None else 0
    checkpoint_every = every(checkpoint_every, total) if checkpoint_dir is not None else 0

    history = History()
    start = 0
    if checkpoint_dir is not None and resume and checkpoint.steps(checkpoint_dir):
        template = {
            "params": params,
            "opt_state": opt_state,
            "model_state": model_state,
            "key": key,
        }
        start, restored = checkpoint.restore(checkpoint_dir, template)
        params, opt_state, model_state = (
            restored["params"],
            restored["opt_state"],
            restored["model_state"],
        )
        key = restored["key"]
        data_key, step_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
        history_file = Path(checkpoint_dir) / f"history_{start:09d}.json"
        if history_file.exists():
            history = History.from_json(history_file.read_text())

    plan = as_plan(mesh)
    update = make_update(loss_fn, optimizer, has_aux=has_aux, has_state=has_state, mesh=plan)
    one = _make_step(update, nan_guard, takes_key)

    def block(carry: tuple[Any, ...], batches: Any, base_key: Any) -> tuple[Any, ...]:
        with loop_body():
            return jax.lax.scan(lambda c, b: (one(c, b, base_key), None), carry, batches)[0]

    single = jax.jit(one, donate_argnums=(0,))
    multi = jax.jit(block, donate_argnums=(0,))
    eval_fns = dict(metrics or {})
    eval_fns_jit = {k: jax.jit(fn) for k, fn in eval_fns.items()}
    eval_loss = jax.jit(lambda *args: _loss_only(loss_fn, has_aux, has_state, takes_key, *args))

    # One copy up front: the step donates its buffers, and the caller's arrays must survive fit.
    params, model_state, opt_state = jax.tree.map(jnp.copy, (params, model_state, opt_state))
    first_batch = jax.tree.map(lambda a: a[:batch_size], data)
    shapes = jax.eval_shape(
        lambda p, s, o, b: update(p, s, o, b, jax.random.key(0) if takes_key else None)[3],
        params, model_state, opt_state, first_batch,
    )  # fmt: skip

    def zero_sums() -> dict[str, Any]:
        return {
            **{k: jnp.zeros(v.shape, v.dtype) for k, v in shapes.items()},
            "steps": jnp.zeros((), jnp.float32),
        }

    no_step = jnp.asarray(-1, jnp.int32)
    carry: tuple[Any, ...] = (
        params, model_state, opt_state, jnp.asarray(False), jnp.asarray(start, jnp.int32),
        zero_sums(), no_step,
    )  # fmt: skip
    stream = _epoch_batches(data_key, data, batch_size, start)
    if plan is not None:
        carry = (*plan.place(carry[:3], check_rules=True), *plan.place(carry[3:], replicated=True))
        step_key = plan.place(step_key, replicated=True)
        count, index = jax.process_count(), jax.process_index()
        stream = process_rows(stream, batch_size, index, count, "fit")
    if prefetch:
        stream = _prefetched(stream, prefetch)
    stopped: str | None = None
    best: float | None = None
    stale = 0
    bar = tqdm(total=total, initial=start, unit="step", disable=not progress, desc="fit")
    step = last_log = start
    try:
        while step < total:
            k = fused if fused > 1 and total - step >= fused else 1
            if k > 1:
                group = [next(stream) for _ in range(k)]
                stacked = jax.tree.map(
                    lambda *xs: (np if isinstance(xs[0], np.ndarray) else jnp).stack(xs), *group
                )
                if plan is not None:
                    stacked = plan.put_batch(stacked, axis=1)
                carry = multi(carry, stacked, step_key)
            else:
                batch = next(stream)
                carry = single(carry, batch if plan is None else plan.put_batch(batch), step_key)
            params, model_state, opt_state = carry[:3]
            step += k
            at_end = step >= total
            if step % log_every == 0 or at_end:
                sums, first_bad = jax.device_get((carry[5], carry[6]))
                carry = (*carry[:5], zero_sums(), carry[6])
                bar.update(step - last_log)
                last_log = step
                count = float(sums.pop("steps"))
                row = {k: float(np.mean(v)) / count for k, v in sums.items()} if count else None
                if int(first_bad) >= 0:
                    bad = int(first_bad)
                    stopped = (
                        f"non-finite loss or parameters at step {bad}; stopped and kept the "
                        f"parameters from before that step"
                    )
                    if row is not None:
                        history.append(bad, **row)
                    step = bad
                    bar.write(f"fit: {stopped}")
                    break
                assert row is not None
                history.append(step, **row)
                bar.set_postfix(loss=f"{row['loss']:.4g}")
            if eval_every and (step % eval_every == 0 or at_end):
                args = (params, model_state) if has_state else (params,)
                scores = _mean_over(
                    {"eval_loss": eval_loss, **eval_fns_jit},
                    eval_data,
                    eval_batch_size or batch_size,
                    args,
                )
                history.append(step, **scores)
                bar.set_postfix(
                    loss=f"{history['loss'][-1]:.4g}", **{k: f"{v:.4g}" for k, v in scores.items()}
                )
                if early_stopping is not None:
                    value = scores.get(early_stopping.monitor)
                    if value is None:
                        raise ConfigError(
                            f"fit: early_stopping monitors '{early_stopping.monitor}', which the "
                            f"evaluation does not produce (it gives {sorted(scores)})"
                        )
                    sign = 1 if early_stopping.mode == "min" else -1
                    if best is None or sign * (value - best) < -early_stopping.min_delta:
                        best, stale = value, 0
                    else:
                        stale += 1
                        if stale >= early_stopping.patience:
                            stopped = (
                                f"early stopping at step {step}: {early_stopping.monitor} has not "
                                f"improved on {best:.6g} for {stale} evaluations"
                            )
                            bar.write(f"fit: {stopped}")
            if checkpoint_dir is not None and (step % checkpoint_every == 0 or at_end or stopped):
                _save(checkpoint_dir, step, params, opt_state, model_state, key, history, keep)
            if stopped:
                break
    finally:
        bar.close()
    return FitResult(params, opt_state, model_state if has_state else None, history, step, stopped)


def _loss_only(
    loss_fn: Callable[..., Any], has_aux: bool, has_state: bool, takes_key: bool, *args: Any
) -> Any:
    call_args = args + ((None,) if takes_key else ())
    out = loss_fn(*call_args)
    return out[0] if (has_aux or has_state) else out


def _save(
    directory: str | os.PathLike[str],
    step: int,
    params: Any,
    opt_state: Any,
    model_state: Any,
    key: jax.Array,
    history: History,
    keep: int,
) -> None:
    tree = {"params": params, "opt_state": opt_state, "model_state": model_state, "key": key}
    checkpoint.save(directory, step, tree, keep=keep)
    path = Path(directory) / f"history_{step:09d}.json"
    checkpoint._write_atomic(path, history.to_json().encode())
    kept = set(checkpoint.steps(directory))
    for old in Path(directory).glob("history_*.json"):
        if int(old.stem.split("_")[1]) not in kept:
            old.unlink(missing_ok=True)
