"""Max and average pooling over the spatial axes of channels-last input: windowed and adaptive.

``max_pool(window)``, ``avg_pool(window)`` and the adaptive ones are layers; call them on an array to use them as functions.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

from funcgrad.errors import ConfigError
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


def _bins(length: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's adaptive bins of ``range(length)``: bin ``i`` is ``[floor(i·L/out), ceil((i+1)·L/out))``.

    Returns ``(index, inside)``, both ``(out, widest bin)``: each bin's positions, padded by
    repeating its last one, and which of them are really in it.
    """
    starts = [i * length // out for i in range(out)]
    ends = [math.ceil((i + 1) * length / out) for i in range(out)]
    width = max(e - s for s, e in zip(starts, ends, strict=True))
    offsets = np.arange(width)
    index = np.array([np.minimum(s + offsets, e - 1) for s, e in zip(starts, ends, strict=True)])
    inside = np.array([s + offsets < e for s, e in zip(starts, ends, strict=True)])
    return index, inside


@dataclasses.dataclass(frozen=True)
class AdaptivePool(ParamLayer):
    """Pooling to a fixed output size per spatial axis (PyTorch's adaptive pooling); made by
    `adaptive_avg_pool` and `adaptive_max_pool`."""

    reduction: str
    output_size: tuple[int | None, ...]
    name: str | None = None

    @property
    def kind(self) -> str:  # type: ignore[override]
        return f"adaptive_{self.reduction}_pool"

    def check_input(self, x: Spec, path: Path) -> None:
        nd = len(self.output_size)
        require_rank(x, (nd + 2,), path, self.kind, "(batch, *spatial, channels)")
        require_float(x, path, self.kind)

    def forward(self, params: Params, x: Array, ctx: Context, path: Path) -> Array:
        # Pooling a box is pooling each axis in turn, so one axis at a time: gather every bin's
        # positions (padded to the widest bin) and reduce over them.
        for axis, out in enumerate(self.output_size, start=1):
            if out is None:
                continue
            index, inside = _bins(x.shape[axis], out)
            windows = jnp.take(x, jnp.asarray(index), axis=axis)  # (..., out, width, ...)
            rest = [1] * (x.ndim - axis - 1)
            mask = jnp.asarray(inside).reshape(*[1] * axis, *inside.shape, *rest)
            if self.reduction == "max":
                x = jnp.max(jnp.where(mask, windows, -jnp.inf), axis=axis + 1)
            else:
                count = jnp.asarray(inside.sum(1), x.dtype).reshape(*[1] * axis, out, *rest)
                x = jnp.sum(jnp.where(mask, windows, 0), axis=axis + 1) / count
        return x


def _adaptive(reduction: str, output_size: int | Sequence[int | None]) -> AdaptivePool:
    sizes = (output_size,) if isinstance(output_size, int) else tuple(output_size)
    if not sizes or any(s is not None and (not isinstance(s, int) or s < 1) for s in sizes):
        raise ConfigError(
            f"adaptive_{reduction}_pool: output_size must be a positive int or a tuple of them "
            f"(None keeps an axis); got {output_size!r}"
        )
    return AdaptivePool(reduction, sizes)


def adaptive_avg_pool(output_size: int | Sequence[int | None]) -> AdaptivePool:
    """Average pooling to ``output_size`` per spatial axis, PyTorch's ``AdaptiveAvgPool``.

    Output position ``i`` of an axis of length ``L`` averages input positions
    ``floor(i·L/out)`` to ``ceil((i+1)·L/out) − 1``; bins may overlap when ``out`` does not
    divide ``L``. An int is one spatial axis (``(batch, length, channels)``); a tuple has an
    entry per spatial axis, ``None`` leaving that axis as it is. ``(1, 1)`` is global pooling.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcgrad import nn
      >>> nn.adaptive_avg_pool(2)(jnp.array([[[1.0], [2.0], [3.0]]]))[0, :, 0].tolist()
      [1.5, 2.5]
    """
    return _adaptive("avg", output_size)


def adaptive_max_pool(output_size: int | Sequence[int | None]) -> AdaptivePool:
    """Max pooling to ``output_size`` per spatial axis, PyTorch's ``AdaptiveMaxPool``; bins as
    `adaptive_avg_pool`.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcgrad import nn
      >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
      >>> nn.adaptive_max_pool((2, 1))(x)[0, :, :, 0].tolist()
      [[7.0], [15.0]]
    """
    return _adaptive("max", output_size)
