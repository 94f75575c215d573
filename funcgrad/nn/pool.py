"""Max and average pooling over the spatial axes of channels-last input, from one reduce_window factory.

``max_pool(window)`` and ``avg_pool(window)`` are layers; call them on an array to use them as functions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
from jax import lax

from funcgrad.nn.layer import (
    Array,
    Context,
    ParamLayer,
    Params,
    Path,
    Spec,
    require_float,
    require_rank,
)
from funcgrad.nn.window import Padding, padding_arg, per_axis


@dataclasses.dataclass(frozen=True)
class Pool(ParamLayer):
    """Pooling over ``len(window)`` spatial axes; the reduction is ``"max"`` or ``"avg"``."""

    reduction: str
    window: Sequence[int]
    strides: int | Sequence[int] | None = None
    padding: Padding = "VALID"
    count_include_pad: bool = True
    name: str | None = None

    @property
    def kind(self) -> str:  # type: ignore[override]
        return f"{self.reduction}_pool"

    def check_input(self, x: Spec, path: Path) -> None:
        nd = len(tuple(self.window))
        require_rank(x, (nd + 2,), path, f"{self.kind}", "(batch, *spatial, channels)")
        require_float(x, path, self.kind)

    def forward(self, params: Params, x: Array, ctx: Context, path: Path) -> Array:
        nd = len(tuple(self.window))
        window = (1, *per_axis(self.window, nd, "window", self.kind), 1)
        strides = (1, *per_axis(self.strides or self.window, nd, "strides", self.kind), 1)
        pad = padding_arg(self.padding, nd, self.kind)
        pads = pad if isinstance(pad, str) else [(0, 0), *pad, (0, 0)]
        if self.reduction == "max":
            return lax.reduce_window(x, -jnp.inf, lax.max, window, strides, pads)
        total = lax.reduce_window(x, 0.0, lax.add, window, strides, pads)
        if self.count_include_pad:
            return total / jnp.prod(jnp.array(window)).astype(x.dtype)
        ones = jnp.ones((1, *x.shape[1:-1], 1), x.dtype)
        return total / lax.reduce_window(ones, 0.0, lax.add, window, strides, pads)


def max_pool(
    window: Sequence[int], strides: int | Sequence[int] | None = None, padding: Padding = "VALID"
) -> Pool:
    """Max pooling with a ``window`` per spatial axis; ``strides`` default to the window.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcgrad import nn
      >>> nn.max_pool((2, 2))(jnp.arange(16.0).reshape(1, 4, 4, 1))[0, :, :, 0].tolist()
      [[5.0, 7.0], [13.0, 15.0]]
    """
    return Pool("max", tuple(window), strides, padding)


def avg_pool(
    window: Sequence[int],
    strides: int | Sequence[int] | None = None,
    padding: Padding = "VALID",
    count_include_pad: bool = True,
) -> Pool:
    """Average pooling; with padding, ``count_include_pad`` says whether pads count in the mean.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcgrad import nn
      >>> nn.avg_pool((2,))(jnp.array([[[1.0], [3.0]]])).tolist()
      [[[2.0]]]
    """
    return Pool("avg", tuple(window), strides, padding, count_include_pad)
