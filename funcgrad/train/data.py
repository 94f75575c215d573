"""Mini-batches for training: `batches` and `num_examples`, which live in `funcgrad.data`.

`parallel.process_batches` uses the same code, so it sits below both `train` and `parallel`.
"""

from funcgrad.data import batches, num_examples

__all__ = ["batches", "num_examples"]
