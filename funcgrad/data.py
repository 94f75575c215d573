"""Keyed mini-batch iteration over a pytree of arrays with a leading example axis, and each process's rows.

One epoch visits each example at most once, in an order drawn from the key: same key, same batches.
Public as `funcgrad.train.batches`; below both `train` and `parallel`, which feed batches.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from funcgrad.errors import ConfigError, ShapeError
from funcgrad.paths import leaves_with_paths


@functools.partial(jax.jit, static_argnums=1)
def permutation(key: jax.Array, n: int) -> jax.Array:
    """`jax.random.permutation` of ``n``, compiled once per ``n`` (the same order, one dispatch).

    Example:
      >>> import jax
      >>> from funcgrad.data import permutation
      >>> sorted(permutation(jax.random.key(0), 5).tolist())
      [0, 1, 2, 3, 4]
    """
    return jax.random.permutation(key, n)


def num_examples(arrays: Any) -> int:
    """The shared size of the leading axis of every leaf; a clear error if they disagree.

    Example:
      >>> import numpy as np, funcgrad as fg
      >>> fg.train.num_examples({"x": np.zeros((5, 2)), "y": np.zeros(5)})
      5
    """
    leaves = leaves_with_paths(arrays)
    if not leaves:
        raise ShapeError("batches: the data pytree has no arrays")
    sizes = {name or "data": int(np.shape(a)[0]) if np.ndim(a) else -1 for name, a in leaves}
    if len(set(sizes.values())) != 1 or -1 in sizes.values():
        raise ShapeError(
            f"batches: every array needs the same leading (example) axis; got sizes {sizes}"
        )
    return next(iter(sizes.values()))


def batches(
    key: jax.Array | None,
    arrays: Any,
    batch_size: int,
    *,
    shuffle: bool = True,
    drop_last: bool = True,
) -> Iterator[Any]:
    """Yield one epoch of mini-batches of ``arrays`` (NumPy or JAX, any pytree).

    Args:
      key: PRNG key that fixes the order (required when ``shuffle``).
      arrays: pytree of arrays sharing a leading example axis.
      batch_size: examples per batch.
      shuffle: draw the order from ``key``; else keep the data's order.
      drop_last: drop a final, smaller batch (keeps shapes fixed, so a jitted
        step compiles once).

    Example:
      >>> import jax, numpy as np, funcgrad as fg
      >>> data = (np.arange(10), np.arange(10) * 2)
      >>> [x.tolist() for x, _ in fg.train.batches(None, data, 4, shuffle=False)]
      [[0, 1, 2, 3], [4, 5, 6, 7]]
    """
    n = num_examples(arrays)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batches: batch_size must be a positive int; got {batch_size!r}")
    if drop_last and batch_size > n:
        raise ConfigError(
            f"batches: the data set has {n} examples, fewer than one batch of {batch_size} "
            "(use a smaller batch_size or drop_last=False)"
        )
    leaves, treedef = jax.tree.flatten(arrays)
    if shuffle:
        if key is None:
            raise ConfigError("batches: shuffle=True needs a PRNG key")
        # Gather the epoch in its order once; each batch is then a contiguous slice (a view,
        # for NumPy data) instead of a gather of its own.
        order = np.asarray(permutation(key, n))
        leaves = [leaf[order] for leaf in leaves]
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield jax.tree.unflatten(treedef, [leaf[start : start + batch_size] for leaf in leaves])


def process_rows(
    stream: Iterator[Any], global_batch_size: int, index: int, count: int, where: str
) -> Iterator[Any]:
    """Process ``index`` of ``count``'s own rows of every global batch in ``stream``.

    Every process draws the same global batches (same key, same data) and keeps its slice;
    ``where`` names the caller in errors.

    Example:
      >>> import numpy as np
      >>> from funcgrad.data import process_rows
      >>> [b.tolist() for b in process_rows(iter([np.arange(4)]), 4, 1, 2, "example")]
      [[2, 3]]
    """
    if count == 1:
        yield from stream
        return
    if global_batch_size % count:
        raise ConfigError(
            f"{where}: global batch size {global_batch_size} does not divide over {count} processes"
        )
    local = global_batch_size // count
    for batch in stream:
        yield jax.tree.map(lambda a: a[index * local : (index + 1) * local], batch)
