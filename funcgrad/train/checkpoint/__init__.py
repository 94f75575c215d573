"""Checkpoints: one front (front.py) that picks the format, the single-host ``.npz`` format (npz.py),
the sharded orbax format (sharded.py), and what both share (leaves.py)."""

from funcgrad.errors import CheckpointError, DamagedCheckpointError
from funcgrad.train.checkpoint.front import (
    load_params,
    load_sharded_params,
    restore,
    restore_sharded,
    save,
    save_sharded,
    sharded_steps,
    steps,
)

__all__ = [
    "CheckpointError", "DamagedCheckpointError", "load_params", "load_sharded_params", "restore",
    "restore_sharded", "save", "save_sharded", "sharded_steps", "steps",
]  # fmt: skip
