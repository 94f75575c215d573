"""Writes the checkpoints in this folder with the code on main before the checkpoint package
(layout funcgrad-checkpoint-1: keystr-keyed .npz, and orbax folders named by '/' paths).

Run once, against that code, from the project root:
  mkdir /tmp/old && git archive fbf2357 funcgrad | tar -x -C /tmp/old
  PYTHONPATH=/tmp/old python tests/data/checkpoints/make_v1.py tests/data/checkpoints
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from funcgrad import train


def fit_tree():
    """The layout `fit` saves: parameters, Adam's state, model state and the run's key."""
    params = {
        "dense_0": {
            "w": jnp.arange(6.0, dtype=jnp.float32).reshape(2, 3),
            "b": jnp.ones(3, jnp.float32),
        },
        "dense_1": {"w": jnp.full((3, 1), 0.5, jnp.float32), "b": jnp.zeros(1, jnp.float32)},
    }
    opt_state = optax.adam(1e-3).init(params)
    return {"params": params, "opt_state": opt_state, "model_state": {}, "key": jax.random.key(3)}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    train.save(out / "npz_v1", 4, fit_tree(), keep=None)
    train.save(out / "npz_v1_bare", 2, jnp.arange(3.0, dtype=jnp.float32), keep=None)
    train.save_sharded(out / "sharded_v1", 4, fit_tree(), keep=None)
