"""`fit`: the training loop researchers write by hand, with progress, evaluation, NaN guard and checkpoints.

The step stays a jitted function; the loop only feeds batches and reads metrics at logging points.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from funcgrad.errors import ConfigError
from funcgrad.train import checkpoint
from funcgrad.train.data import num_examples
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


def _guarded(update: Callable[..., Any]) -> Callable[..., Any]:
    """One step that refuses non-finite results: once a loss or parameter is not finite, the
    state stops changing and ``halted`` stays set, so the last finite parameters are kept
    without copying them every step."""

    def step(
        params: Any, model_state: Any, opt_state: Any, halted: Any, batch: Any, key: Any
    ) -> Any:
        new = update(params, model_state, opt_state, batch, key)
        ok = jnp.isfinite(new[3]["loss"]) & _all_finite(new[0])
        take = ok & ~halted
        kept = jax.tree.map(
            lambda n, o: jnp.where(take, n, o), new[:3], (params, model_state, opt_state)
        )
        return (*kept, halted | ~ok, {**new[3], "finite": ok})

    return step


def _batch_indices(
    data_key: jax.Array, n: int, batch_size: int, start: int
) -> Iterator[np.ndarray]:
    """Index arrays of every batch from global step ``start`` on; epoch e is ordered by fold_in(key, e)."""
    per_epoch = n // batch_size
    epoch, offset = divmod(start, per_epoch)
    while True:
        order = np.asarray(jax.random.permutation(jax.random.fold_in(data_key, epoch), n))
        for b in range(offset, per_epoch):
            yield order[b * batch_size : (b + 1) * batch_size]
        epoch, offset = epoch + 1, 0


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
    nan_guard: bool = True,
    progress: bool = True,
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
      nan_guard: stop at the first non-finite loss or parameter, naming the step, and
        return the last finite parameters.
      progress: show a progress bar (loss, steps/s).

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

    update = make_update(loss_fn, optimizer, has_aux=has_aux, has_state=has_state)
    one = _guarded(update) if nan_guard else _unguarded(update)

    def block(
        params: Any, model_state: Any, opt_state: Any, halted: Any, batches: Any, keys: Any
    ) -> Any:
        def body(carry: Any, xs: Any) -> Any:
            *state, m = one(*carry, *xs)
            return tuple(state), m

        carry, m = jax.lax.scan(body, (params, model_state, opt_state, halted), (batches, keys))
        return (*carry, m)

    single = jax.jit(one, donate_argnums=(0, 1, 2))
    multi = jax.jit(block, donate_argnums=(0, 1, 2))
    eval_fns = dict(metrics or {})
    eval_fns_jit = {k: jax.jit(fn) for k, fn in eval_fns.items()}
    eval_loss = jax.jit(lambda *args: _loss_only(loss_fn, has_aux, has_state, takes_key, *args))

    halted = jnp.asarray(False)
    indices = _batch_indices(data_key, n, batch_size, start)
    pending: list[tuple[int, Any]] = []
    stopped: str | None = None
    best: float | None = None
    stale = 0
    bar = tqdm(total=total, initial=start, unit="step", disable=not progress, desc="fit")
    step = start
    try:
        while step < total:
            k = fused if fused > 1 and total - step >= fused else 1
            idx = [next(indices) for _ in range(k)]
            step_keys = (
                jax.vmap(lambda i: jax.random.fold_in(step_key, i))(jnp.arange(step, step + k))
                if takes_key
                else None
            )
            state = (params, model_state, opt_state, halted)
            if k > 1:
                stack = lambda a, idx=idx: (np if isinstance(a, np.ndarray) else jnp).stack(
                    [a[i] for i in idx]
                )
                params, model_state, opt_state, halted, m = multi(
                    *state, jax.tree.map(stack, data), step_keys
                )
            else:
                batch = jax.tree.map(lambda a, i=idx[0]: a[i], data)
                one_key = None if step_keys is None else step_keys[0]
                params, model_state, opt_state, halted, m = single(*state, batch, one_key)
            pending.append((step, m))
            step += k
            bar.update(k)
            at_end = step >= total
            if step % log_every == 0 or at_end:
                row, bad = _drain(pending)
                pending = []
                if bad is not None:
                    stopped = (
                        f"non-finite loss or parameters at step {bad}; stopped and kept the "
                        f"parameters from before that step (step {bad - 1 if bad else 0} done)"
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


def _unguarded(update: Callable[..., Any]) -> Callable[..., Any]:
    def step(
        params: Any, model_state: Any, opt_state: Any, halted: Any, batch: Any, key: Any
    ) -> Any:
        p, s, o, m = update(params, model_state, opt_state, batch, key)
        return p, s, o, halted, {**m, "finite": jnp.asarray(True)}

    return step


def _loss_only(
    loss_fn: Callable[..., Any], has_aux: bool, has_state: bool, takes_key: bool, *args: Any
) -> Any:
    call_args = args + ((None,) if takes_key else ())
    out = loss_fn(*call_args)
    return out[0] if (has_aux or has_state) else out


def _drain(pending: list[tuple[int, Any]]) -> tuple[dict[str, float] | None, int | None]:
    """Fetch the metrics of the steps since the last log: their means, and the first bad step."""
    fetched = jax.device_get([m for _, m in pending])
    rows: list[dict[str, float]] = []
    first_bad = None
    for (start, _), m in zip(pending, fetched, strict=True):
        values = {k: np.atleast_1d(np.asarray(v)) for k, v in m.items()}
        for j in range(len(values["loss"])):
            if not values["finite"][j]:
                first_bad = start + j
                break
            rows.append({k: float(v[j]) for k, v in values.items() if k != "finite"})
        if first_bad is not None:
            break
    if not rows:
        return None, first_bad
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}, first_bad


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
