"""Training: jitted steps over optax, fused multi-step loops, batching, per-example gradients, fit, checkpoints."""

from funcgrad.train.checkpoint import CheckpointError, restore, save, steps
from funcgrad.train.data import batches, num_examples
from funcgrad.train.history import History
from funcgrad.train.loop import EarlyStopping, FitResult, fit
from funcgrad.train.per_example import global_norms, per_example_grads
from funcgrad.train.step import make_multistep, make_step, make_update

__all__ = [
    "CheckpointError", "EarlyStopping", "FitResult", "History", "batches", "fit", "global_norms",
    "make_multistep", "make_step", "make_update", "num_examples", "per_example_grads", "restore",
    "save", "steps",
]  # fmt: skip
