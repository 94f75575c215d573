"""Watching a `fit` run from outside: TensorBoard event files, JSON lines, `jax.profiler` traces.

`TensorBoard` and `JsonLines` write the rows the history gets (at `LogMetrics`' and `Evaluate`'s steps), with the learning rate and the time per step; `Profile` traces chosen steps.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import optax

from funcgrad.errors import ConfigError, MissingToolError
from funcgrad.io import write_atomic
from funcgrad.paths import dotted
from funcgrad.train.hook import Hook, Run
from funcgrad.train.state import unwrap_guard

__all__ = ["JsonLines", "Profile", "TensorBoard"]


def _writable_dir(directory: Path, who: str) -> None:
    """Make ``directory`` and write a scratch file in it, or say plainly why it cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise ConfigError(
            f"{who}: cannot write to the log directory {directory}: {err.strerror or err}"
        ) from err


def _learning_rates(opt_state: Any) -> dict[str, float]:
    """The learning rate(s) held by the ``optax.inject_hyperparams`` states in ``opt_state``:
    ``{"learning_rate": v}`` for one, ``{"learning_rate/<dotted path>": v}`` for several."""
    found = [
        (path, hyper["learning_rate"])
        for path, hyper in optax.tree_utils.tree_get_all_with_path(
            unwrap_guard(opt_state), "hyperparams"
        )
        if isinstance(hyper, dict) and "learning_rate" in hyper
    ]
    values = jax.device_get([v for _, v in found])
    if len(found) == 1:
        return {"learning_rate": float(values[0])}
    return {
        f"learning_rate/{dotted(path[:-1])}": float(v)
        for (path, _), v in zip(found, values, strict=True)
    }


class _Logger(Hook):
    """What `TensorBoard` and `JsonLines` share: after each call, the history's new rows, one
    record per step (the rows of one step merged), plus the learning rate and the time per step
    at the step just taken; subclasses open, write and close."""

    every: int | None = 1  # looks at the history after each call; writes only when it grew

    def __init__(self) -> None:
        self._history: Any = None
        self._seen = self._begin = 0
        self._clock: tuple[int, float] | None = None
        self._open = False

    def _check(self) -> None:
        """Raise if the destination cannot be written (at the start, not at the first write)."""
        raise NotImplementedError

    def _start_writing(self, begin: int) -> None:
        """Open the destination for a run that starts at step ``begin``."""
        raise NotImplementedError

    def _write(self, records: dict[int, dict[str, float]]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and close the destination; `fit` calls it after every run, also one that raised."""
        self._open = False

    def start(self, run: Run) -> None:
        self.close()  # a writer left open by a run that raised
        if jax.process_index() == 0:
            self._check()
        self._history, self._seen, self._begin = run.history, len(run.history.rows), run.step
        self._clock = None

    def after_step(self, run: Run) -> None:
        if run.history is not self._history:
            name = type(self).__name__
            raise ConfigError(
                f"{name}: a hook listed after it (Checkpoint) resumed the run and replaced the "
                f"history, so {name} cannot tell the new rows from the old; list it after "
                f"Checkpoint: hooks=[fg.train.Checkpoint(...), ..., fg.train.{name}(...)]"
            )
        if self._clock is None:  # the first call has compiled and run: time steps from here
            jax.block_until_ready(run.state)
            self._clock = (run.step, time.perf_counter())
        rows = run.history.rows[self._seen :]
        if not rows:
            return
        self._seen += len(rows)
        records: dict[int, dict[str, float]] = {}
        for row in rows:
            records.setdefault(int(row["step"]), {}).update(
                {k: float(v) for k, v in row.items() if k != "step"}
            )
        now = records.get(run.step)
        if now is not None:  # the state is this step's: its learning rate, the time since
            now.update(_learning_rates(run.state.opt_state))
            step0, t0 = self._clock
            if run.step > step0:
                t1 = time.perf_counter()
                now["step_time"] = (t1 - t0) / (run.step - step0)
                self._clock = (run.step, t1)
        if jax.process_index() != 0:
            return
        if not self._open:
            self._start_writing(self._begin)
            self._open = True
        self._write(records)

    def end(self, run: Run) -> None:
        try:
            self.after_step(run)
        finally:
            self.close()


class TensorBoard(_Logger):
    """Write the run's numbers as TensorBoard scalars in ``logdir`` (tensorboardX's event files).

    Each history row becomes scalars at its step, tagged with the history's names (``loss``,
    ``eval_loss``, your metrics), so they appear where `LogMetrics` and `Evaluate` record them;
    with them ``learning_rate`` (when the optimizer is ``optax.inject_hyperparams(...)``: the
    rate the step used) and ``step_time`` (wall seconds per step since the previous logged
    step, evaluation and checkpoints included; the first call's compilation is not). List it
    after `LogMetrics`, `Evaluate` and `Checkpoint` so it sees their rows at their step.

    Each run writes a new events file. A run that starts at step ``s`` (resumed by a
    `Checkpoint` hook; 0 for a fresh one) marks it with ``purge_step=s + 1``: TensorBoard hides
    what an earlier run in ``logdir`` wrote after step ``s`` (the steps an interrupted run
    took past its last checkpoint), and shows one curve. Readers that ignore the mark
    (``tbparse``) see those steps twice. The events reach the file within two seconds, and
    all of them at the end (`close`). Needs ``pip install 'funcgrad[tensorboard]'``.

    Example:
      >>> import tempfile, jax, jax.numpy as jnp, numpy as np, optax, funcgrad as fg
      >>> logdir = tempfile.mkdtemp()
      >>> x = np.linspace(-1, 1, 64, dtype=np.float32)[:, None]
      >>> loss_fn = lambda w, b: jnp.mean((b[0] * w - 3 * b[0]) ** 2)
      >>> _ = fg.train.fit(loss_fn, optax.sgd(0.5), jnp.zeros(()), (x,), key=jax.random.key(0),
      ...                  batch_size=16, steps=8, hooks=[fg.train.LogMetrics(4),
      ...                                                 fg.train.TensorBoard(logdir)])
      >>> from tbparse import SummaryReader
      >>> scalars = SummaryReader(logdir).scalars
      >>> scalars[scalars.tag == "loss"].step.tolist()
      [4, 8]
    """

    def __init__(self, logdir: str | os.PathLike[str]) -> None:
        super().__init__()
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise MissingToolError(
                "TensorBoard needs tensorboardX: pip install 'funcgrad[tensorboard]' "
                "(or tensorboardX)"
            ) from None
        self.logdir = Path(logdir)
        self._writer_class = SummaryWriter
        self._writer: Any = None

    def _check(self) -> None:
        _writable_dir(self.logdir, "TensorBoard")

    def _start_writing(self, begin: int) -> None:
        # A suffix that sorts by creation, so two runs started within a second neither share
        # a file name (tensorboardX's is to the second) nor come back in the wrong order.
        # tensorboardX writes from a thread, which flushes the file every ``flush_secs``.
        self._writer = self._writer_class(
            str(self.logdir), purge_step=begin + 1, filename_suffix=f".{time.time_ns()}",
            flush_secs=2,
        )  # fmt: skip

    def _write(self, records: dict[int, dict[str, float]]) -> None:
        for step, values in records.items():
            for tag, value in values.items():
                self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        super().close()


class JsonLines(_Logger):
    """Append one JSON object per logged step to ``path``: ``{"step": 10, "loss": 0.31, ...}``.

    The same numbers as `TensorBoard` (the history's rows merged per step, ``learning_rate``,
    ``step_time``), for scripts: ``[json.loads(line) for line in open(path)]``. Each line is
    flushed as it is written; NaN and infinities are written as ``null``, so every line is
    valid JSON. The file is appended to; a run that starts at step ``s`` (resumed by a
    `Checkpoint` hook; 0 for a fresh one) first drops the lines an earlier run wrote after
    step ``s`` (and a last line cut short by a crash), so each step appears once.

    Example:
      >>> import json, tempfile, jax, jax.numpy as jnp, numpy as np, optax, funcgrad as fg
      >>> path = tempfile.mkdtemp() + "/run.jsonl"
      >>> x = np.linspace(-1, 1, 64, dtype=np.float32)[:, None]
      >>> loss_fn = lambda w, b: jnp.mean((b[0] * w - 3 * b[0]) ** 2)
      >>> _ = fg.train.fit(loss_fn, optax.sgd(0.5), jnp.zeros(()), (x,), key=jax.random.key(0),
      ...                  batch_size=16, steps=8, hooks=[fg.train.LogMetrics(4),
      ...                                                 fg.train.JsonLines(path)])
      >>> [(r["step"], sorted(r)) for r in map(json.loads, open(path))]
      [(4, ['loss', 'step', 'step_time']), (8, ['loss', 'step', 'step_time'])]
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)

    def _check(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a"):
                pass
        except OSError as err:
            raise ConfigError(
                f"JsonLines: cannot append to {self.path}: {err.strerror or err}"
            ) from err

    def _start_writing(self, begin: int) -> None:
        text = self.path.read_text() if self.path.exists() else ""
        lines = text.splitlines(keepends=True)
        kept = [line for line in lines if line.endswith("\n") and _step_of(line) <= begin]
        if len(kept) != len(lines):
            mode = self.path.stat().st_mode & 0o777
            write_atomic(self.path, "".join(kept).encode(), mode=mode)

    def _write(self, records: dict[int, dict[str, float]]) -> None:
        with open(self.path, "a") as f:
            for step, values in records.items():
                clean = {k: (v if math.isfinite(v) else None) for k, v in values.items()}
                f.write(json.dumps({"step": step, **clean}, allow_nan=False) + "\n")
                f.flush()


def _step_of(line: str) -> float:
    """The step of a line `JsonLines` wrote (-inf for a line that is not one: it is kept)."""
    try:
        record = json.loads(line)
    except ValueError:
        return -math.inf
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) else -math.inf


class Profile(Hook):
    """A `jax.profiler` trace of the steps from step count ``a`` to ``b`` (``steps=(a, b)``), in ``logdir``.

    Like ``range(a, b)``: the trace starts once ``a`` steps are done and stops after step
    ``b``, so it holds the ``b - a`` steps in between (``a >= 1`` leaves the first call's
    compilation out). The state is waited for before starting and before stopping, so the
    trace holds exactly those steps' device work. A run that ends inside the window stops the
    trace at its end; ``traced`` says which steps the last trace covered. With ``fit(fused=k)``
    the trace starts and stops between calls. The trace is
    ``logdir/plugins/profile/<time>/<host>.xplane.pb``: TensorBoard's profile plugin (or
    xprof) opens it; give it the `TensorBoard` hook's directory to see both together.

    Example:
      >>> import funcgrad as fg
      >>> hook = fg.train.Profile("runs/a", steps=(10, 15))
      >>> hook.every, hook.traced
      (5, None)
    """

    def __init__(self, logdir: str | os.PathLike[str], steps: tuple[int, int]) -> None:
        ok = (
            isinstance(steps, tuple)
            and len(steps) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) for s in steps)
        )
        if not ok or not 0 <= steps[0] < steps[1]:
            raise ConfigError(
                "Profile: steps must be a pair of ints (a, b) with 0 <= a < b, the trace "
                f"covering the steps after the first a up to step b; got {steps!r}"
            )
        self.logdir, self.steps = Path(logdir), steps
        self.every = math.gcd(*steps)  # called exactly at a and at b
        self.traced: tuple[int, int] | None = None
        self._from: int | None = None

    def start(self, run: Run) -> None:
        if self._from is not None:  # a trace left running by a run that raised
            self._stop(run)
        self.traced = None
        _writable_dir(self.logdir, "Profile")
        self._maybe_start(run)

    def _maybe_start(self, run: Run) -> None:
        a, b = self.steps
        if self._from is None and a <= run.step < b:
            jax.block_until_ready(run.state)
            jax.profiler.start_trace(str(self.logdir))
            self._from = run.step

    def _stop(self, run: Run) -> None:
        jax.block_until_ready(run.state)
        jax.profiler.stop_trace()
        if self._from is not None:
            self.traced = (self._from, run.step)
        self._from = None

    def after_step(self, run: Run) -> None:
        if self._from is not None and run.step >= self.steps[1]:
            self._stop(run)
        self._maybe_start(run)

    def end(self, run: Run) -> None:
        if self._from is not None:
            self._stop(run)

    def close(self) -> None:
        if self._from is not None:  # the run raised inside the window
            jax.profiler.stop_trace()
            self._from = None
