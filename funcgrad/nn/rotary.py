"""Rotary position embeddings (RoPE): rotate query/key feature pairs by an angle proportional to position.

`MultiHeadAttention(rope=True)` applies `rotary` to its queries and keys, also when decoding with a cache.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import jax
import jax.numpy as jnp

from funcgrad.errors import ConfigError, ShapeError


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """How `rotary` stretches its wavelengths for contexts longer than the model was trained on.

    ``rope_type="linear"`` divides every frequency by ``factor`` (positions interpolated);
    ``"llama3"`` is Llama 3.1's scheme (Hugging Face's ``_compute_llama3_parameters``):
    wavelengths shorter than ``original_max_position_embeddings / high_freq_factor`` stay,
    those longer than ``original_max_position_embeddings / low_freq_factor`` are stretched by
    ``factor``, and those between are interpolated smoothly.

    Example:
      >>> from funcgrad import nn
      >>> nn.RopeScaling("llama3", factor=8.0).original_max_position_embeddings
      8192
    """

    rope_type: Literal["linear", "llama3"] = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        if self.rope_type not in ("linear", "llama3"):
            raise ConfigError(
                f"RopeScaling: rope_type must be 'linear' or 'llama3'; got {self.rope_type!r}"
            )
        if not self.factor > 0 or (
            self.rope_type == "llama3" and not self.high_freq_factor > self.low_freq_factor > 0
        ):
            raise ConfigError(
                f"RopeScaling: needs factor > 0 (and high_freq_factor > low_freq_factor > 0 for "
                f"llama3); got {self}"
            )

    def frequencies(self, inverse: jax.Array) -> jax.Array:
        """The scaled inverse frequencies for unscaled ``inverse`` ones."""
        if self.rope_type == "linear":
            return inverse / self.factor
        context = self.original_max_position_embeddings
        wavelength = 2 * math.pi / inverse
        smooth = (context / wavelength - self.low_freq_factor) / (
            self.high_freq_factor - self.low_freq_factor
        )
        smoothed = (1 - smooth) * inverse / self.factor + smooth * inverse
        long = wavelength > context / self.low_freq_factor
        short = wavelength < context / self.high_freq_factor
        return jnp.where(long, inverse / self.factor, jnp.where(short, inverse, smoothed))


def rotary(
    x: jax.Array, positions: Any, *, base: float = 10000.0, scaling: RopeScaling | None = None
) -> jax.Array:
    """Rotate ``x`` ``(batch, length, heads, head_dim)`` by its ``positions``.

    Pairing convention: half-split, as in GPT-NeoX and Llama (Hugging Face's
    ``rotate_half``): feature ``i`` pairs with feature ``i + head_dim/2``, and the pair
    ``(a, b)`` becomes ``(a cos θ - b sin θ, b cos θ + a sin θ)`` with
    ``θ = position · base^(-2i/head_dim)`` for ``i < head_dim/2``. (The original RoFormer
    and GPT-J pair neighbours ``(2i, 2i+1)`` instead: the same rotation up to a
    permutation of the features, so weights converted from such a model need one.)
    Angles are computed in at least float32; the result has ``x``'s dtype.

    Args:
      x: queries or keys, ``(batch, length, heads, head_dim)``, ``head_dim`` even.
      positions: integer or float positions, ``(length,)`` or ``(batch, length)``.
      base: the wavelength base (Hugging Face's ``rope_theta``).
      scaling: optional `RopeScaling` of the frequencies (Llama 3.1's, or linear).

    Example:
      >>> import jax.numpy as jnp
      >>> from funcgrad import nn
      >>> x = jnp.ones((1, 3, 2, 4))
      >>> y = nn.rotary(x, jnp.arange(3))
      >>> bool(jnp.allclose(y[:, 0], x[:, 0])), y.shape  # position 0 is not rotated
      (True, (1, 3, 2, 4))
    """
    x = jnp.asarray(x)
    positions = jnp.asarray(positions)
    if x.ndim != 4 or x.shape[-1] % 2:
        raise ShapeError(
            "nn.rotary: x must be (batch, length, heads, head_dim) with an even head_dim; got "
            f"shape {tuple(x.shape)}"
        )
    if positions.ndim not in (1, 2) or positions.shape[-1] != x.shape[1]:
        raise ShapeError(
            f"nn.rotary: positions must be (length,) or (batch, length) with length "
            f"{x.shape[1]}; got shape {tuple(positions.shape)}"
        )
    half = x.shape[-1] // 2
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    inverse = base ** (-jnp.arange(half, dtype=dtype) * 2 / x.shape[-1])
    if scaling is not None:
        inverse = scaling.frequencies(inverse)
    angles = positions.astype(dtype)[..., None, None] * inverse  # (..., length, 1, half)
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    a, b = x[..., :half].astype(dtype), x[..., half:].astype(dtype)
    return jnp.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1).astype(x.dtype)


def segment_positions(segment_ids: Any) -> jax.Array:
    """Each token's position within its segment: counts restart at 0 where the id changes.

    Packed sequences put several documents in one row; ``segment_ids`` ``(batch, length)``
    says which document each token belongs to (contiguous runs). The positions are what
    each document would see alone: the input of `rotary` and of position embeddings.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcgrad import nn
      >>> nn.segment_positions(jnp.array([[0, 0, 0, 1, 1, 2]])).tolist()
      [[0, 1, 2, 0, 1, 0]]
    """
    ids = jnp.asarray(segment_ids)
    if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ShapeError(
            f"segment_ids must be integer (batch, length); got {ids.dtype}{tuple(ids.shape)}"
        )
    index = jnp.arange(ids.shape[1])
    starts = jnp.concatenate([jnp.ones((ids.shape[0], 1), bool), ids[:, 1:] != ids[:, :-1]], axis=1)
    first = jax.lax.cummax(jnp.where(starts, index, 0), axis=1)
    return index - first
