"""Dropout: zero each entry with probability ``rate`` in training mode, scaling the rest by 1/(1 − rate).

Active only when ``apply`` gets a key (or ``train=True``); the key is folded with the layer's path.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from funcgrad.errors import ConfigError
from funcgrad.nn.layer import Array, Context, ParamLayer, Params, Path, path_key
from funcgrad.paths import describe


@dataclasses.dataclass(frozen=True)
class Dropout(ParamLayer):
    """Inverted dropout with drop probability ``rate`` in [0, 1).

    Unlike stax, ``rate`` is the probability of *dropping*, and the mode is
    chosen per call: ``apply(params, x, key=k)`` trains, ``apply(params, x)``
    evaluates (identity).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> drop = nn.Dropout(0.5)
      >>> y = drop.apply({}, jnp.ones((1000,)), key=jax.random.key(0))
      >>> sorted(set(y.tolist()))
      [0.0, 2.0]
    """

    rate: float
    name: str | None = None
    kind = "dropout"

    def __post_init__(self) -> None:
        if not isinstance(self.rate, (int, float)) or not 0 <= self.rate < 1:
            raise ConfigError(f"Dropout: rate must be in [0, 1); got {self.rate!r}")

    def forward(self, params: Params, x: Array, ctx: Context, path: Path) -> Array:
        if not ctx.train or self.rate == 0:
            return x
        if ctx.key is None:
            raise ConfigError(
                f"Dropout at {describe(path)}: training mode needs a PRNG key; pass key=... to apply"
            )
        keep = jax.random.bernoulli(path_key(ctx.key, path), 1 - self.rate, x.shape)
        return jnp.where(keep, x / (1 - self.rate), jnp.zeros_like(x))
