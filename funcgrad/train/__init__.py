"""Training: jitted steps over optax, fused multi-step loops, batching, per-example gradients, fit, checkpoints."""

from funcgrad.train.checkpoint import (
    CheckpointError,
    DamagedCheckpointError,
    load_params,
    load_sharded_params,
    restore,
    restore_sharded,
    save,
    save_sharded,
    sharded_steps,
    steps,
)
from funcgrad.train.data import batches, num_examples, resume_by_skipping
from funcgrad.train.history import History
from funcgrad.train.hooks import (
    Checkpoint,
    EarlyStopping,
    Evaluate,
    Hook,
    LogMetrics,
    Progress,
    Run,
    restore_state,
)  # fmt: skip
from funcgrad.train.loggers import JsonLines, Profile, TensorBoard
from funcgrad.train.loop import FitResult, default_hooks, fit
from funcgrad.train.per_example import global_norms, per_example_grads
from funcgrad.train.state import NanGuardState, TrainState, nan_guard, nonfinite_step
from funcgrad.train.step import Step, make_multistep, make_step, make_update
from funcgrad.train.trainable import merge_trainable, split_trainable

__all__ = [
    "Checkpoint", "CheckpointError", "DamagedCheckpointError", "EarlyStopping", "Evaluate",
    "FitResult", "History", "Hook", "JsonLines", "LogMetrics", "NanGuardState", "Profile",
    "Progress", "Run", "Step", "TensorBoard", "TrainState", "batches", "default_hooks", "fit",
    "global_norms", "load_params", "load_sharded_params", "make_multistep", "make_step",
    "make_update", "merge_trainable", "nan_guard", "nonfinite_step", "num_examples",
    "per_example_grads", "restore",
    "restore_sharded", "restore_state", "resume_by_skipping", "save", "save_sharded", "sharded_steps",
    "split_trainable", "steps",
]  # fmt: skip
