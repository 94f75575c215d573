"""Embedding: a lookup table from integer ids ``(...)`` to vectors ``(..., features)``.

The table is ``(num_embeddings, features)``, initialised N(0, 1) as in PyTorch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from funcgrad.errors import DTypeError
from funcgrad.nn.layer import (
    Array,
    Context,
    Initializer,
    ParamLayer,
    Params,
    ParamSpec,
    Path,
    Spec,
    path_str,
)


@dataclasses.dataclass(frozen=True)
class Embedding(ParamLayer):
    """Look up rows of ``params['embedding']`` by integer id; ids out of range are clamped by XLA.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> emb = nn.Embedding(10, 4)
      >>> ids = jnp.array([[1, 2, 3]])
      >>> emb.apply(emb.init(jax.random.key(0), ids), ids).shape
      (1, 3, 4)
    """

    num_embeddings: int
    features: int
    embedding_init: Initializer = jax.nn.initializers.normal(stddev=1.0)
    dtype: Any = None
    param_dtype: Any = jnp.float32
    name: str | None = None
    kind = "embedding"

    def check_input(self, x: Spec, path: Path) -> None:
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise DTypeError(
                f"Embedding at {path_str(path)}: expected integer ids; got dtype {x.dtype}"
            )

    def param_specs(self, x: Spec, path: Path) -> dict[str, ParamSpec]:
        shape = (self.num_embeddings, self.features)
        return {"embedding": ParamSpec(shape, self.param_dtype, self.embedding_init)}

    def forward(self, params: Params, x: Array, ctx: Context, path: Path) -> Array:
        table = params["embedding"]
        return jnp.take(table.astype(self.dtype or table.dtype), x, axis=0)
