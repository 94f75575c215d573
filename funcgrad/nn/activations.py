"""Activations, each both a function (``nn.relu(x)``) and a parameterless layer (``serial(..., nn.relu)``).

All come from one factory, `elementwise`; sigmoid, softplus and the softmaxes use funcgrad's stable primitives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from funcgrad.nn.layer import Array, Context, ParamLayer, Params, Path
from funcgrad.primitives import stable


@dataclasses.dataclass(frozen=True)
class Elementwise(ParamLayer):
    """A parameterless layer that applies ``fn`` to its input; callable as ``fn`` itself."""

    fn: Callable[[Array], Array]
    kind: str = "elementwise"
    name: str | None = None

    def forward(self, params: Params, x: Array, ctx: Context, path: Path) -> Array:
        return self.fn(x)

    def __repr__(self) -> str:
        return f"nn.{self.kind}"


def elementwise(fn: Callable[[Array], Array], kind: str | None = None) -> Elementwise:
    """A layer from any function of one array, e.g. ``elementwise(jnp.sin)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcgrad import nn
      >>> swish = nn.elementwise(lambda x: x * nn.sigmoid(x), "swish")
      >>> float(swish(jnp.array(0.0)))
      0.0
    """
    return Elementwise(fn, kind or str(getattr(fn, "__name__", "elementwise")))


def _gelu(x: Array) -> Array:
    return jax.nn.gelu(x, approximate=False)


relu = elementwise(jax.nn.relu, "relu")
"""max(0, x)."""
sigmoid = elementwise(stable.sigmoid, "sigmoid")
"""1 / (1 + exp(−x)), funcgrad's stable primitive."""
tanh = elementwise(jnp.tanh, "tanh")
"""The hyperbolic tangent."""
gelu = elementwise(_gelu, "gelu")
"""x·Φ(x) with the exact normal CDF (PyTorch's default; ``jax.nn.gelu`` defaults to the tanh form)."""
softplus = elementwise(stable.log1pexp, "softplus")
"""log(1 + exp(x)), funcgrad's stable log1pexp primitive."""
softmax = elementwise(stable.softmax, "softmax")
"""Softmax over the last axis."""
log_softmax = elementwise(stable.log_softmax, "log_softmax")
"""Log-softmax over the last axis."""
