"""The parts of `fit`'s loop besides stepping: logging, evaluation, early stopping, checkpoints, progress.

Each is a `Hook` that `fit` calls every ``every`` steps and at the start and end; a user adds or replaces them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from funcgrad.data import num_examples
from funcgrad.errors import ConfigError
from funcgrad.io import write_atomic
from funcgrad.parallel.plan import Mesh, Plan, as_plan
from funcgrad.train import checkpoint
from funcgrad.train.history import History
from funcgrad.train.state import (
    NanGuardState,
    TrainState,
    key_parts,
    nonfinite_step,
    unwrap_guard,
)


@dataclasses.dataclass
class Run:
    """What the hooks of one `fit` share: the state, the step, the history, and how it ends.

    ``step`` is the Python mirror of ``state.step`` (reading it needs no device sync);
    ``stopped`` is why the run stopped early (None while it goes on); ``scores`` holds the
    last evaluation as ``(step, {name: value})``. A hook stops the run with `stop`.
    """

    state: TrainState
    step: int
    total: int
    history: History = dataclasses.field(default_factory=History)
    stopped: str | None = None
    nonfinite: bool = False
    scores: tuple[int, dict[str, float]] | None = None
    final_rows: int | None = None  # rows before this index were logged on schedule

    def stop(self, reason: str) -> None:
        """End the run after this step, saying why."""
        if self.stopped is None:
            self.stopped = reason


class Hook:
    """One part of `fit`'s loop. ``every``: steps between `after_step` calls (0: never).

    `start` runs before the first step (after a resume), `after_step` after every compiled
    call that lands on a multiple of ``every``, `end` once after the last step. Hooks run
    in the order given; subclass and override what you need.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, optax, funcgrad as fg
      >>> class PrintLoss(fg.train.Hook):
      ...     every = 40
      ...     def after_step(self, run):
      ...         print(run.step, round(run.history["loss"][-1], 2))
      >>> x = np.linspace(-1, 1, 64, dtype=np.float32)[:, None]
      >>> loss_fn = lambda w, b: jnp.mean((b[0] * w - 3 * b[0]) ** 2)
      >>> _ = fg.train.fit(loss_fn, optax.sgd(0.5), jnp.zeros(()), (x,), key=jax.random.key(0),
      ...                  batch_size=16, steps=80, log_every=40, progress=False, hooks=[PrintLoss()])
      40 0.14
      80 0.0
    """

    every: int = 0

    def start(self, run: Run) -> None:
        """Before the first step."""

    def after_step(self, run: Run) -> None:
        """After a call whose last step is a multiple of ``every``."""

    def end(self, run: Run) -> None:
        """After the last step (or an early stop)."""


class LogMetrics(Hook):
    """Every ``every`` steps: the mean of each metric since the last row, into the history.

    Reading the sums waits for the device, so it is not done every step. It also reads the
    NaN guard, and stops the run at the first non-finite step, keeping the parameters from
    before it.
    """

    def __init__(self, every: int) -> None:
        self.every = every

    def _read(self, run: Run) -> tuple[dict[str, float] | None, int]:
        bad = nonfinite_step(run.state.opt_state)
        sums, first_bad = jax.device_get((run.state.sums, -1 if bad is None else bad))
        count = int(sums.pop("count"))
        row = {k: float(np.mean(v)) / count for k, v in sums.items()} if count else None
        return row, int(first_bad)

    def after_step(self, run: Run) -> None:
        row, bad = self._read(run)
        run.state = run.state.replace(sums=jax.tree.map(jnp.zeros_like, run.state.sums))
        if bad >= 0:
            if row is not None:
                run.history.append(bad, **row)
            run.step = bad
            run.state = run.state.replace(step=jnp.asarray(bad, jnp.int32))
            run.nonfinite = True
            run.stop(
                f"non-finite loss or parameters at step {bad}; stopped and kept the parameters "
                "from before that step"
            )
            return
        if row is not None:
            run.history.append(run.step, **row)

    def end(self, run: Run) -> None:
        if run.nonfinite:
            return
        row, bad = self._read(run)  # the steps since the last row; the state keeps its sums
        if bad >= 0:
            self.after_step(run)
        elif row is not None:
            run.history.append(run.step, **row)


class Evaluate(Hook):
    """Every ``every`` steps and at the end: the mean of ``eval_loss`` and each metric over ``data``.

    ``metrics[name](params, batch)`` (``(params, model_state, batch)`` with state); the
    loss is ``loss_fn`` without a key. Batches of ``batch_size``, the last one smaller.
    """

    def __init__(
        self,
        data: Any,
        metrics: Mapping[str, Callable[..., Any]] | None,
        every: int,
        batch_size: int,
        loss: Callable[..., Any] | None = None,
        has_state: bool = False,
    ) -> None:
        self.data, self.every, self.batch_size, self.has_state = data, every, batch_size, has_state
        fns = {"eval_loss": loss} if loss is not None else {}
        self.fns = {k: jax.jit(f) for k, f in {**fns, **(metrics or {})}.items()}

    def evaluate(self, run: Run) -> dict[str, float]:
        state = run.state
        args = (state.params, state.model_state) if self.has_state else (state.params,)
        n = num_examples(self.data)
        totals = dict.fromkeys(self.fns, 0.0)
        for start in range(0, n, self.batch_size):
            batch = jax.tree.map(lambda a, s=start: a[s : s + self.batch_size], self.data)
            size = min(self.batch_size, n - start)
            for name, fn in self.fns.items():
                totals[name] += float(fn(*args, batch)) * size
        return {k: v / n for k, v in totals.items()}

    def after_step(self, run: Run) -> None:
        scores = self.evaluate(run)
        run.history.append(run.step, **scores)
        run.scores = (run.step, scores)

    def end(self, run: Run) -> None:
        if not run.nonfinite and (run.scores is None or run.scores[0] != run.step):
            self.after_step(run)


@dataclasses.dataclass
class EarlyStopping(Hook):
    """Stop when ``monitor`` (an evaluation metric) has not improved for ``patience`` evaluations."""

    monitor: str = "eval_loss"
    patience: int = 3
    mode: str = "min"
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ConfigError(f"EarlyStopping: mode must be 'min' or 'max'; got {self.mode!r}")
        self.every = 1
        self._best: float | None = None
        self._stale = 0
        self._seen = -1

    def start(self, run: Run) -> None:
        self._best, self._stale, self._seen = None, 0, -1

    def after_step(self, run: Run) -> None:
        if run.scores is None or run.scores[0] == self._seen:
            return
        step, scores = run.scores
        self._seen = step
        value = scores.get(self.monitor)
        if value is None:
            raise ConfigError(
                f"fit: early_stopping monitors '{self.monitor}', which the evaluation does not "
                f"produce (it gives {sorted(scores)})"
            )
        sign = 1 if self.mode == "min" else -1
        if self._best is None or sign * (value - self._best) < -self.min_delta:
            self._best, self._stale = value, 0
            return
        self._stale += 1
        if self._stale >= self.patience:
            run.stop(
                f"early stopping at step {step}: {self.monitor} has not improved on "
                f"{self._best:.6g} for {self._stale} evaluations"
            )

    def end(self, run: Run) -> None:
        self.after_step(run)


class Checkpoint(Hook):
    """Every ``every`` steps and at the end: save the `TrainState` and the history atomically.

    The arrays go to a checkpoint (`funcgrad.train.save`) as ``{"params", "opt_state",
    "model_state", "key"}`` (the optimizer's own state, as ``optimizer.init`` makes it), so
    `restore` with that ``like`` or `load_params` reads them; ``history_{step}.json`` holds
    the rows logged on schedule and ``loop_{step}.json`` the running metric sums and the NaN
    guard's record.
    At the start, with ``resume``, continue from the newest intact checkpoint in
    ``directory`` (`restore_state`): the resumed run's parameters and history are the
    uninterrupted run's. The ``keep`` newest are kept.

    ``mesh`` (the run's `jax.sharding.Mesh` or `funcgrad.parallel.Plan`; `fit` passes its
    own) is handed to `save` and `restore`, which pick the format: with one, a sharded
    checkpoint (``sharded_{step}/``, orbax), each process writing the shards it holds and a
    resume reading back only those it needs, laid out on the mesh; without, ``ckpt_{step}.npz``.
    The JSON files are written by process 0.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        every: int,
        *,
        keep: int = 3,
        resume: bool = True,
        mesh: Mesh | Plan | None = None,
    ) -> None:
        self.directory, self.every, self.keep, self.resume = Path(directory), every, keep, resume
        self.plan = as_plan(mesh)
        self.saved = -1

    def start(self, run: Run) -> None:
        if not (self.resume and checkpoint.steps(self.directory)):
            return
        step, run.state = restore_state(self.directory, run.state, mesh=self.plan)
        run.step = step
        history_file = self.directory / f"history_{step:09d}.json"
        if history_file.exists():
            run.history = History.from_json(history_file.read_text())
        self.saved = step

    def after_step(self, run: Run) -> None:
        self.save(run)

    def end(self, run: Run) -> None:
        if self.saved != run.step:
            self.save(run)

    def save(self, run: Run) -> None:
        """Write the history logged on schedule (not the end-of-run rows), the loop's sums, then
        the arrays: a checkpoint is complete once its arrays are, and then its JSON is there."""
        step, state = run.step, run.state
        rows = run.history.rows if run.final_rows is None else run.history.rows[: run.final_rows]
        sums = jax.device_get(state.sums)  # replicated: every process can read them
        bad = nonfinite_step(state.opt_state)
        writer = jax.process_index() == 0
        if writer:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomic(
                self.directory / f"history_{step:09d}.json", History(rows).to_json().encode()
            )
            loop = {
                "sums": {
                    k: [np.asarray(v).dtype.name, np.asarray(v, np.float64).tolist()]
                    for k, v in sums.items()
                },
                "first_bad": -1 if bad is None else int(bad),
            }
            write_atomic(self.directory / f"loop_{step:09d}.json", json.dumps(loop).encode())
        tree = {
            "params": state.params,
            "opt_state": unwrap_guard(state.opt_state),
            "model_state": state.model_state,
            "key": state.run_key(),
        }
        checkpoint.save(self.directory, step, tree, keep=self.keep, mesh=self.plan)
        kept = set(checkpoint.steps(self.directory))
        if writer:
            for pattern in ("history_*.json", "loop_*.json"):
                for old in self.directory.glob(pattern):
                    if int(old.stem.split("_")[1]) not in kept:
                        old.unlink(missing_ok=True)
        self.saved = step


def restore_state(
    directory: str | os.PathLike[str], like: TrainState, *, mesh: Mesh | Plan | None = None
) -> tuple[int, TrainState]:
    """The newest intact checkpoint `fit` wrote in ``directory``, as a `TrainState` shaped like ``like``.

    `restore` reads it, either format, laid out on ``mesh`` when given (each process reading
    only the shards it holds); a damaged newest checkpoint is skipped with a `RuntimeWarning`.
    Checkpoints of earlier versions of `fit` (without ``loop_{step}.json``) load too: their
    running sums start from zero.
    """
    plan = as_plan(mesh)
    guarded = isinstance(like.opt_state, NanGuardState)
    template = {
        "params": like.params,
        "opt_state": unwrap_guard(like.opt_state),
        "model_state": like.model_state,
        "key": like.run_key(),
    }
    step, tree = checkpoint.restore(directory, template, mesh=plan)
    sums, first_bad = jax.tree.map(jnp.zeros_like, like.sums), -1
    loop_file = Path(directory) / f"loop_{step:09d}.json"
    if loop_file.exists():
        loop = json.loads(loop_file.read_text())
        saved = {k: jnp.asarray(np.asarray(v, dtype)) for k, (dtype, v) in loop["sums"].items()}
        if {k: (v.shape, v.dtype) for k, v in saved.items()} != {
            k: (v.shape, v.dtype) for k, v in sums.items()
        }:
            raise checkpoint.CheckpointError(
                f"{loop_file}: the saved metric sums {sorted(saved)} are not the ones this run "
                f"logs {sorted(sums)}; was it written by another loss function?"
            )
        sums, first_bad = saved, int(loop["first_bad"])
    opt_state = tree["opt_state"]
    if guarded:
        opt_state = NanGuardState(
            opt_state, jnp.asarray(step, jnp.int32), jnp.asarray(first_bad, jnp.int32)
        )
    key, impl = key_parts(tree["key"])
    state = TrainState(
        tree["params"], opt_state, tree["model_state"], jnp.asarray(step, jnp.int32),
        key, sums, impl,
    )  # fmt: skip
    return step, state


class Progress(Hook):
    """A progress bar: steps, loss and the last evaluation, with the compile time shown apart.

    The bar's rate and ETA count from the end of the first call, so compiling the step
    does not make the first estimate absurd; the compile time shows as ``compile=``.
    """

    def __init__(self, every: int, *, desc: str = "fit") -> None:
        self.every, self.desc = every, desc
        self.bar: Any = None
        self.compiled: float | None = None

    def start(self, run: Run) -> None:
        self.bar = tqdm(total=run.total, initial=run.step, unit="step", desc=self.desc)
        self.bar.set_postfix_str("compiling the step…")
        self.shown, self.t0, self.compiled = run.step, time.perf_counter(), None

    def first_call_done(self, run: Run) -> None:
        """Called by `fit` once the first call has compiled: restart the rate from here."""
        self.compiled = time.perf_counter() - self.t0
        bar = self.bar
        bar.update(run.step - self.shown)
        self.shown = run.step
        bar.initial, bar.start_t = bar.n, bar._time()
        bar.last_print_n, bar.last_print_t = bar.n, bar.start_t
        bar.set_postfix_str(f"compile={self.compiled:.1f}s")

    def after_step(self, run: Run) -> None:
        if run.step > self.shown:
            self.bar.update(run.step - self.shown)
            self.shown = run.step
        post = {"loss": f"{run.history['loss'][-1]:.4g}"} if run.history["loss"] else {}
        if run.scores is not None:
            post.update({k: f"{v:.4g}" for k, v in run.scores[1].items()})
        if self.compiled is not None:
            post["compile"] = f"{self.compiled:.1f}s"
        self.bar.set_postfix(post)

    def end(self, run: Run) -> None:
        if self.bar is None:
            return
        self.after_step(run)
        if run.stopped:
            self.bar.write(f"fit: {run.stopped}")
        self.bar.close()


def interval(value: int | None, default: int, fused: int) -> int:
    """A hook interval rounded up to a multiple of ``fused`` (0 stays 0: only at the end)."""
    step = default if value is None else value
    if step <= 0:
        return 0
    return max(fused, math.ceil(step / fused) * fused)
