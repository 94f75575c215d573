"""The hooks of `fit`'s loop, all importable from here: the protocol (hook.py), the metrics hooks
(metrics.py), the progress bar (progress.py), and the checkpoint hook with `restore_state`, kept here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from funcgrad.io import write_atomic
from funcgrad.parallel.plan import Mesh, Plan, as_plan
from funcgrad.train import checkpoint
from funcgrad.train.history import History
from funcgrad.train.hook import Hook, Run, interval
from funcgrad.train.metrics import EarlyStopping, Evaluate, LogMetrics
from funcgrad.train.progress import Progress
from funcgrad.train.state import (
    NanGuardState,
    TrainState,
    key_parts,
    nonfinite_step,
    unwrap_guard,
)

__all__ = [
    "Checkpoint", "EarlyStopping", "Evaluate", "Hook", "LogMetrics", "Progress", "Run",
    "interval", "restore_state",
]  # fmt: skip


class Checkpoint(Hook):
    """Every ``every`` steps and at the end: save the `TrainState` and the history atomically.

    The arrays go to a checkpoint (`funcgrad.train.save`) as ``{"params", "opt_state",
    "model_state", "key"}`` (the optimizer's own state, as ``optimizer.init`` makes it), so
    `restore` with that ``like`` or `load_params` reads them; ``history_{step}.json`` holds
    the rows logged on schedule, ``loop_{step}.json`` the running metric sums and the NaN
    guard's record, and, when `fit` streams from an iterable, ``data_{step}.json`` the data's
    position after the last batch a step consumed (the iterator's ``get_state()``, as grain's
    report it, or just the count of batches), so that a resume continues from the same example.
    At the start, with ``resume``, continue from the newest intact checkpoint in
    ``directory`` (`restore_state`): the resumed run's parameters and history are the
    uninterrupted run's. The ``keep`` newest are kept.

    ``mesh`` (a `jax.sharding.Mesh` or `funcgrad.parallel.Plan`; by default the run's, from
    `fit`'s ``mesh=``) is handed to `save` and `restore`, which pick the format: with one, a sharded
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
        step, run.state = restore_state(self.directory, run.state, mesh=self._plan(run))
        run.step = step
        history_file = self.directory / f"history_{step:09d}.json"
        if history_file.exists():
            run.history = History.from_json(history_file.read_text())
        data_file = self.directory / f"data_{step:09d}.json"
        saved = json.loads(data_file.read_text()) if data_file.exists() else None
        if run.data is not None:
            run.data.restore(saved, step, str(data_file))
        elif saved is not None:
            raise checkpoint.CheckpointError(
                f"fit: the checkpoint at step {step} ({data_file}) holds the position of a data "
                f"stream ({saved['iterator']}), but this fit is given in-memory arrays; pass "
                "the same data as the run that wrote it"
            )
        self.saved = step

    def _plan(self, run: Run) -> Plan | None:
        """The mesh given to this hook, else the run's (`fit`'s ``mesh=``)."""
        return self.plan if self.plan is not None else run.plan

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
            if run.data is not None:
                position = json.dumps(run.data.position()).encode()
                write_atomic(self.directory / f"data_{step:09d}.json", position)
        tree = {
            "params": state.params,
            "opt_state": unwrap_guard(state.opt_state),
            "model_state": state.model_state,
            "key": state.run_key(),
        }
        checkpoint.save(self.directory, step, tree, keep=self.keep, mesh=self._plan(run))
        kept = set(checkpoint.steps(self.directory))
        if writer:
            for pattern in ("history_*.json", "loop_*.json", "data_*.json"):
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
