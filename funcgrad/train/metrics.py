"""The hooks that read the run's numbers: `LogMetrics` (history rows, the NaN stop), `Evaluate`
(held-out metrics) and `EarlyStopping` (stop when an evaluation metric stops improving).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcgrad.data import num_examples
from funcgrad.errors import ConfigError
from funcgrad.train.hook import Hook, Run
from funcgrad.train.state import nonfinite_step


class LogMetrics(Hook):
    """Every ``every`` steps: the mean of each metric since the last row, into the history.

    Reading the sums waits for the device, so it is not done every step. ``every=None``:
    about one row an epoch (at least 10 and at most 100 steps apart), the same for any run
    length, so a resumed or extended run logs at the same steps. It also reads the NaN
    guard, and stops the run at the first non-finite step, keeping the parameters from
    before it.
    """

    def __init__(self, every: int | None = None) -> None:
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
    loss is `fit`'s ``loss_fn`` with no key (dropout off). ``every=None``: at the end only.
    Batches of ``batch_size`` (default: `fit`'s), the last one smaller.

    Example:
      >>> import numpy as np, funcgrad as fg
      >>> hook = fg.train.Evaluate((np.zeros((8, 2)),), {"zero": lambda p, b: 0.0}, every=50)
      >>> hook.every, hook.batch_size
      (50, None)
    """

    def __init__(
        self,
        data: Any,
        metrics: Mapping[str, Callable[..., Any]] | None = None,
        every: int | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.data, self.metrics, self.every, self.batch_size = data, metrics, every, batch_size
        self.fns: dict[str, Any] = {}
        self.has_state, self.size = False, 1

    def start(self, run: Run) -> None:
        fns = {"eval_loss": run.loss} if run.loss is not None else {}
        self.fns = {k: jax.jit(f) for k, f in {**fns, **(self.metrics or {})}.items()}
        self.has_state, self.size = run.has_state, self.batch_size or run.batch_size or 1

    def evaluate(self, run: Run) -> dict[str, float]:
        state = run.state
        args = (state.params, state.model_state) if self.has_state else (state.params,)
        n = num_examples(self.data)
        totals = dict.fromkeys(self.fns, 0.0)
        for start in range(0, n, self.size):
            batch = jax.tree.map(lambda a, s=start: a[s : s + self.size], self.data)
            size = min(self.size, n - start)
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
    """Stop when ``monitor`` (an evaluation metric) has not improved for ``patience`` evaluations.

    It reads the scores of the `Evaluate` hook before it, after each evaluation (``every=None``).

    Example:
      >>> import funcgrad as fg
      >>> fg.train.EarlyStopping(monitor="accuracy", mode="max", patience=2).every is None
      True
    """

    monitor: str = "eval_loss"
    patience: int = 3
    mode: str = "min"
    min_delta: float = 0.0
    every: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ConfigError(f"EarlyStopping: mode must be 'min' or 'max'; got {self.mode!r}")
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
