"""The hook protocol of `fit`'s loop: `Run` (what the hooks share) and `Hook` (start, after_step, end).

The hooks themselves live by kind: metrics.py (logging, evaluation, early stopping), progress.py, hooks.py (checkpoints).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from funcgrad.parallel.plan import Plan
from funcgrad.train.history import History
from funcgrad.train.state import TrainState


@dataclasses.dataclass
class Run:
    """What the hooks of one `fit` share: the state, the step, the history, and how it ends.

    ``step`` is the Python mirror of ``state.step`` (reading it needs no device sync);
    ``stopped`` is why the run stopped early (None while it goes on); ``scores`` holds the
    last evaluation as ``(step, {name: value})``. ``batch_size``, ``has_state``, ``loss``
    (the loss function without a key, as `Evaluate` uses it) and ``plan`` (the mesh the run's
    state is laid out on, or None) describe the run; ``data`` is the stream an iterable of
    batches is drawn from (its position is what `Checkpoint` saves), None for in-memory arrays.
    A hook stops the run with `stop`.
    """

    state: TrainState
    step: int
    total: int
    history: History = dataclasses.field(default_factory=History)
    stopped: str | None = None
    nonfinite: bool = False
    scores: tuple[int, dict[str, float]] | None = None
    final_rows: int | None = None  # rows before this index were logged on schedule
    batch_size: int = 0
    has_state: bool = False
    loss: Callable[..., Any] | None = None
    plan: Plan | None = None
    data: Any = None  # fit's `train.data.Stream` when it streams from an iterable, else None

    def stop(self, reason: str) -> None:
        """End the run after this step, saying why."""
        if self.stopped is None:
            self.stopped = reason


class Hook:
    """One part of `fit`'s loop. ``every``: steps between `after_step` calls (0 or None: never).

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
      ...                  batch_size=16, steps=80, hooks=[fg.train.LogMetrics(40), PrintLoss()])
      40 0.14
      80 0.0
    """

    every: int | None = 0

    def start(self, run: Run) -> None:
        """Before the first step."""

    def after_step(self, run: Run) -> None:
        """After a call whose last step is a multiple of ``every``."""

    def end(self, run: Run) -> None:
        """After the last step (or an early stop)."""

    def close(self) -> None:
        """After the run, also one that raised: release what the hook holds (files, traces)."""


def interval(value: int | None, default: int, fused: int) -> int:
    """A hook interval rounded up to a multiple of ``fused`` (0 stays 0: only at the end)."""
    step = default if value is None else value
    if step <= 0:
        return 0
    return max(fused, math.ceil(step / fused) * fused)
