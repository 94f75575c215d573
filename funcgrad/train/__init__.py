"""Training: jitted steps over optax optimizers, and keyed mini-batch iteration."""

from funcgrad.train.data import batches, num_examples
from funcgrad.train.step import make_step

__all__ = ["batches", "make_step", "num_examples"]
