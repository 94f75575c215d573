"""Embedding: a lookup table from integer ids ``(...)`` to vectors ``(..., features)``.

The table is ``(num_embeddings, features)``, initialised N(0, 1) as in PyTorch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from funcgrad.errors import ConfigError, DTypeError, IdRangeError
from funcgrad.nn.layer import (
    Array,
    Context,
    Initializer,
    ParamLayer,
    Params,
    ParamSpec,
    Path,
    Spec,
)
from funcgrad.paths import describe

MODES = ("clip", "fill", "error")


@dataclasses.dataclass(frozen=True)
class Embedding(ParamLayer):
    """Look up rows of ``params['embedding']`` (``(num_embeddings, features)``) by integer id.

    Valid ids are ``0 <= id < num_embeddings``; a negative id is out of range too (it does
    not wrap to the last row), and no mode ever gives NaN. What happens to an id out of range:

    - Wherever the ids are concrete (eager calls, ``jax.grad`` of the parameters with
      concrete ids), ``mode="clip"`` and ``mode="error"`` raise `IdRangeError`, naming the
      layer, the vocabulary size and the smallest and largest offending ids, as PyTorch does.
    - Under ``jit`` (or ``vmap``, ``scan``: traced ids, whose values are unknown until run),
      ``mode="clip"`` (the default) clamps each id into ``[0, num_embeddings - 1]``: the
      row and its gradient are those of row 0 (for negative ids) or of the last row.
      ``mode="error"`` checks with `jax.experimental.checkify`: wrap the function in
      ``checkify.checkify`` and the returned error names the offending ids (jitting it
      without ``checkify`` is JAX's error "Cannot abstractly evaluate a checkify.check").
    - ``mode="fill"``: out-of-range ids (padding ids such as ``-1``, say) give a row of
      zeros, eagerly and under ``jit`` alike, and send no gradient to the table.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> emb = nn.Embedding(10, 4)
      >>> ids = jnp.array([[1, 2, 3]])
      >>> emb.apply(emb.init(jax.random.key(0), ids), ids).shape
      (1, 3, 4)
      >>> pad = nn.Embedding(10, 4, mode="fill")
      >>> pad.apply(pad.init(jax.random.key(0), ids), jnp.array([-1, 10])).sum().item()
      0.0
    """

    num_embeddings: int
    features: int
    embedding_init: Initializer = jax.nn.initializers.normal(stddev=1.0)
    dtype: Any = None
    param_dtype: Any = jnp.float32
    mode: Literal["clip", "fill", "error"] = "clip"
    name: str | None = None
    kind = "embedding"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"Embedding: mode must be one of {MODES}; got {self.mode!r}")

    def check_input(self, x: Spec, path: Path) -> None:
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise DTypeError(
                f"Embedding at {describe(path)}: expected integer ids; got dtype {x.dtype}"
            )

    def param_specs(self, x: Spec, path: Path) -> dict[str, ParamSpec]:
        shape = (self.num_embeddings, self.features)
        return {"embedding": ParamSpec(shape, self.param_dtype, self.embedding_init)}

    def forward(self, params: Params, x: Array, ctx: Context, path: Path) -> Array:
        table = params["embedding"]
        table = table.astype(self.dtype or table.dtype)
        n = self.num_embeddings
        message = (
            f"Embedding at {describe(path)}: ids must lie in [0, {n}) (a vocabulary of {n}); "
            "got ids out of range from {lo} to {hi}"
        )
        valid = (x >= 0) & (x < n)
        if self.mode != "fill" and not isinstance(x, jax.core.Tracer):
            ids = np.asarray(x)
            bad = ids[(ids < 0) | (ids >= n)]
            if bad.size:
                raise IdRangeError(message.format(lo=bad.min(), hi=bad.max()))
        elif self.mode == "error":
            lo = jnp.min(jnp.where(valid, n, x))
            hi = jnp.max(jnp.where(valid, -1, x))
            checkify.check(jnp.all(valid), message, lo=lo, hi=hi)
        rows = jnp.take(table, x, axis=0, mode="clip")
        if self.mode == "fill":
            rows = jnp.where(valid[..., None], rows, jnp.zeros((), rows.dtype))
        return rows
