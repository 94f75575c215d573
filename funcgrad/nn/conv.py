"""N-d convolution and transposed convolution (1-, 2- and 3-d, channels last) from one implementation.

Kernels are ``(*kernel_size, in_features // groups, features)``; XLA's conv_general_dilated does the work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from funcgrad.errors import ConfigError, ShapeError
from funcgrad.nn.layer import (
    Array,
    Context,
    Initializer,
    ParamLayer,
    Params,
    ParamSpec,
    Path,
    Spec,
    compute_dtype,
    path_str,
    require_float,
)

Padding = str | int | Sequence[int] | Sequence[tuple[int, int]]
_SPATIAL = {1: "W", 2: "HW", 3: "DHW"}


def _tuple(value: int | Sequence[int], n: int, what: str, layer: str) -> tuple[int, ...]:
    out = (value,) * n if isinstance(value, int) else tuple(value)
    if len(out) != n or not all(isinstance(v, int) and v >= 1 for v in out):
        raise ConfigError(f"{layer}: {what} must be {n} positive ints; got {value!r}")
    return out


def _padding(padding: Padding, n: int, layer: str) -> str | list[tuple[int, int]]:
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ConfigError(f"{layer}: padding must be 'SAME', 'VALID' or ints; got {padding!r}")
        return padding.upper()
    if isinstance(padding, int):
        return [(padding, padding)] * n
    pads = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
    if len(pads) != n or not all(len(p) == 2 for p in pads):
        raise ConfigError(f"{layer}: padding needs {n} ints or (low, high) pairs; got {padding!r}")
    return [(int(lo), int(hi)) for lo, hi in pads]


@dataclasses.dataclass(frozen=True)
class Conv(ParamLayer):
    """N-d convolution over channels-last input ``(batch, *spatial, in_features)``.

    The number of spatial dimensions is ``len(kernel_size)``; an int
    ``kernel_size`` takes it from the input's rank.

    Args:
      features: output channels.
      kernel_size: window size per spatial dimension.
      strides: step per spatial dimension.
      padding: ``"SAME"``, ``"VALID"``, an int, or ``(low, high)`` pairs.
      dilation: kernel dilation (atrous convolution).
      groups: feature groups; ``in_features`` and ``features`` must divide by it
        (``groups == in_features`` is a depthwise convolution).
      use_bias, w_init, b_init, dtype, param_dtype, precision, name: as for
        `Dense`. Default kernel init: LeCun normal over the receptive field
        (Flax's default).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> conv = nn.Conv(8, (3, 3), strides=2)
      >>> x = jnp.zeros((1, 28, 28, 1))
      >>> conv.apply(conv.init(jax.random.key(0), x), x).shape
      (1, 14, 14, 8)
    """

    features: int
    kernel_size: int | Sequence[int]
    strides: int | Sequence[int] = 1
    padding: Padding = "SAME"
    dilation: int | Sequence[int] = 1
    groups: int = 1
    use_bias: bool = True
    w_init: Initializer = jax.nn.initializers.lecun_normal()
    b_init: Initializer = jax.nn.initializers.zeros
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    name: str | None = None
    kind = "conv"
    transpose = False

    def _nd(self, x: Any) -> int:
        if not isinstance(self.kernel_size, int):
            return len(tuple(self.kernel_size))
        return max(x.ndim - 2, 1) if x is not None else 1

    def check_input(self, x: Spec, path: Path) -> None:
        layer = type(self).__name__
        require_float(x, path, layer)
        nd = self._nd(x)
        if nd not in _SPATIAL:
            raise ConfigError(f"{layer} at {path_str(path)}: 1, 2 or 3 spatial dims; got {nd}")
        if x.ndim != nd + 2:
            raise ShapeError(
                f"{layer} at {path_str(path)}: a {nd}-d convolution expects input of rank "
                f"{nd + 2} (batch, {', '.join(_SPATIAL[nd])}, channels); got shape {tuple(x.shape)}"
            )
        if x.shape[-1] % self.groups or self.features % self.groups:
            raise ConfigError(
                f"{layer} at {path_str(path)}: groups={self.groups} must divide the input "
                f"channels ({x.shape[-1]}) and features ({self.features})"
            )

    def param_specs(self, x: Spec, path: Path) -> dict[str, ParamSpec]:
        nd = self._nd(x)
        k = _tuple(self.kernel_size, nd, "kernel_size", type(self).__name__)
        specs = {
            "w": ParamSpec(
                (*k, x.shape[-1] // self.groups, self.features), self.param_dtype, self.w_init
            )
        }
        if self.use_bias:
            specs["b"] = ParamSpec((self.features,), self.param_dtype, self.b_init)
        return specs

    def forward(self, params: Params, x: Array, ctx: Context, path: Path) -> Array:
        layer, nd = type(self).__name__, self._nd(x)
        spatial = _SPATIAL[nd]
        numbers = lax.conv_dimension_numbers(
            x.shape, params["w"].shape, (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
        )
        dtype = compute_dtype(self.dtype, x, *params.values())
        x, w = x.astype(dtype), params["w"].astype(dtype)
        strides = _tuple(self.strides, nd, "strides", layer)
        dilation = _tuple(self.dilation, nd, "dilation", layer)
        padding = _padding(self.padding, nd, layer)
        if self.transpose:
            y = lax.conv_transpose(
                x, w, strides, padding, rhs_dilation=dilation,
                dimension_numbers=numbers, precision=self.precision,
            )  # fmt: skip
        else:
            y = lax.conv_general_dilated(
                x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=numbers,
                feature_group_count=self.groups, precision=self.precision,
            )  # fmt: skip
        if self.use_bias:
            y = y + params["b"].astype(dtype)
        return y


@dataclasses.dataclass(frozen=True)
class ConvTranspose(Conv):
    """Transposed N-d convolution (the gradient of `Conv` with respect to its input; "deconvolution").

    Same arguments as `Conv` except ``groups`` (must stay 1). With ``"SAME"``
    padding and stride ``s`` the spatial size is multiplied by ``s``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> up = nn.ConvTranspose(4, (2, 2), strides=2)
      >>> x = jnp.zeros((1, 7, 7, 8))
      >>> up.apply(up.init(jax.random.key(0), x), x).shape
      (1, 14, 14, 4)
    """

    kind = "conv_transpose"
    transpose = True

    def __post_init__(self) -> None:
        if self.groups != 1:
            raise ConfigError(f"ConvTranspose: groups must be 1; got {self.groups}")
