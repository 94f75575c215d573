"""Embedding tables: `Embedding` (ids to vectors), `PositionEmbedding` (learned positions) and `Unembed`.

A table is ``(num_embeddings, features)``; `Unembed` reads one as an output projection (tied embeddings).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from funcgrad.errors import ConfigError, DTypeError, IdRangeError, ShapeError
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
from funcgrad.nn.rotary import segment_positions
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


@dataclasses.dataclass(frozen=True)
class PositionEmbedding(ParamLayer):
    """Add a learned embedding of each token's position: ``x + params['embedding'][positions]``.

    ``x`` is ``(batch, length, features)`` (token embeddings); the table is
    ``(max_length, features)`` (GPT-2's ``wpe``). The positions are ``0 .. length-1`` in
    training, ``position, position + 1, ...`` when decoding with ``apply(..., position=p)``,
    and restart at 0 at each segment start when ``apply`` gets ``segment_ids=``
    (`segment_positions`). A concrete position at or beyond ``max_length`` is a `ShapeError`;
    under ``jit`` a traced one is clamped to the last row.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> pos = nn.PositionEmbedding(16)
      >>> x = jnp.zeros((1, 3, 4))
      >>> params = pos.init(jax.random.key(0), x)
      >>> bool(jnp.all(pos.apply(params, x) == params["embedding"][:3]))
      True
    """

    max_length: int
    embedding_init: Initializer = jax.nn.initializers.normal(stddev=0.02)
    dtype: Any = None
    param_dtype: Any = jnp.float32
    name: str | None = None
    kind = "position_embedding"

    def __post_init__(self) -> None:
        if not isinstance(self.max_length, int) or self.max_length < 1:
            raise ConfigError(
                f"PositionEmbedding: max_length must be a positive int; got {self.max_length!r}"
            )

    def check_input(self, x: Spec, path: Path) -> None:
        if x.ndim != 3 or not jnp.issubdtype(x.dtype, jnp.inexact):
            raise ShapeError(
                f"PositionEmbedding at {describe(path)}: expected float (batch, length, features); "
                f"got {x.dtype}{tuple(x.shape)}"
            )

    def param_specs(self, x: Spec, path: Path) -> dict[str, ParamSpec]:
        shape = (self.max_length, x.shape[-1])
        return {"embedding": ParamSpec(shape, self.param_dtype, self.embedding_init)}

    def forward(self, params: Params, x: Array, ctx: Context, path: Path) -> Array:
        length = x.shape[1]
        if ctx.segment_ids is not None:
            positions = segment_positions(ctx.segment_ids)
        else:
            start = 0 if ctx.position is None else ctx.position
            positions = start + jnp.arange(length)
            if not isinstance(start, jax.core.Tracer) and int(start) + length > self.max_length:
                raise ShapeError(
                    f"PositionEmbedding at {describe(path)}: positions {int(start)}.."
                    f"{int(start) + length - 1} do not fit a table of max_length={self.max_length}"
                )
        dtype = self.dtype or jnp.result_type(x, params["embedding"])
        rows = jnp.take(params["embedding"], positions, axis=0, mode="clip")
        return x.astype(dtype) + rows.astype(dtype)


@dataclasses.dataclass(frozen=True)
class Unembed(ParamLayer):
    """Logits from an embedding table: ``x @ params['embedding'].T``, ``(..., features)`` to
    ``(..., num_embeddings)``.

    Its parameter is an `Embedding`'s, so with `shared` under one name the two read one table
    (tied input and output embeddings, as in GPT-2): ``nn.shared(nn.Embedding(V, d), "embed")``
    first, ``nn.shared(nn.Unembed(V, d), "embed")`` last.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> model = nn.serial(
      ...     nn.shared(nn.Embedding(10, 4), "embed"), nn.shared(nn.Unembed(10, 4), "embed")
      ... )
      >>> ids = jnp.array([[1, 2]])
      >>> params = model.init(jax.random.key(0), ids)
      >>> sorted(params), model.apply(params, ids).shape
      (['embed'], (1, 2, 10))
    """

    num_embeddings: int
    features: int
    embedding_init: Initializer = jax.nn.initializers.normal(stddev=1.0)
    dtype: Any = None
    param_dtype: Any = jnp.float32
    name: str | None = None
    kind = "unembed"

    def check_input(self, x: Spec, path: Path) -> None:
        if x.ndim < 1 or x.shape[-1] != self.features or not jnp.issubdtype(x.dtype, jnp.inexact):
            raise ShapeError(
                f"Unembed at {describe(path)}: expected float (..., {self.features}); got "
                f"{x.dtype}{tuple(x.shape)}"
            )

    def param_specs(self, x: Spec, path: Path) -> dict[str, ParamSpec]:
        shape = (self.num_embeddings, self.features)
        return {"embedding": ParamSpec(shape, self.param_dtype, self.embedding_init)}

    def forward(self, params: Params, x: Array, ctx: Context, path: Path) -> Array:
        dtype = self.dtype or jnp.result_type(x, params["embedding"])
        return jnp.einsum("...d,vd->...v", x.astype(dtype), params["embedding"].astype(dtype))
