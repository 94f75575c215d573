"""Dense (affine) layers and Scale, the seeds' learned elementwise factor (Torch's nn.Mul).

Both act on the last axis of a batch-first input and keep parameters in ``param_dtype``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

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
    require_float,
)
from funcgrad.paths import describe


@dataclasses.dataclass(frozen=True)
class Dense(ParamLayer):
    """An affine map of the last axis, ``y = x @ w + b``.

    Shapes: ``x`` is ``(..., in_features)``, ``w`` is ``(in_features, features)``,
    ``b`` is ``(features,)``; ``y`` is ``(..., features)``.

    Args:
      features: output size.
      use_bias: add ``b``.
      w_init: kernel initialiser; default LeCun normal (truncated, variance
        1/fan_in), Flax's default.
      b_init: bias initialiser; default zeros.
      dtype: compute dtype (say ``jnp.bfloat16``); default: promote input and params.
      param_dtype: parameter dtype; default float32.
      precision: passed to ``jnp.matmul``.
      name: the key of this layer in its parent's parameter dict.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> layer = nn.Dense(4)
      >>> params = layer.init(jax.random.key(0), jnp.zeros((2, 3)))
      >>> layer.apply(params, jnp.ones((2, 3))).shape
      (2, 4)
    """

    features: int
    use_bias: bool = True
    w_init: Initializer = jax.nn.initializers.lecun_normal()
    b_init: Initializer = jax.nn.initializers.zeros
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    name: str | None = None
    kind = "dense"

    def __post_init__(self) -> None:
        if not isinstance(self.features, int) or self.features < 1:
            raise ConfigError(f"Dense: features must be a positive int; got {self.features!r}")

    def check_input(self, x: Spec, path: Path) -> None:
        require_float(x, path, "Dense")
        if x.ndim < 1:
            raise ShapeError(f"Dense at {describe(path)}: expected (..., features); got a scalar")

    def param_specs(self, x: Spec, path: Path) -> dict[str, ParamSpec]:
        specs = {"w": ParamSpec((x.shape[-1], self.features), self.param_dtype, self.w_init)}
        if self.use_bias:
            specs["b"] = ParamSpec((self.features,), self.param_dtype, self.b_init)
        return specs

    def forward(self, params: Params, x: Array, ctx: Context, path: Path) -> Array:
        dtype = compute_dtype(self.dtype, x, *params.values())
        y = jnp.matmul(x.astype(dtype), params["w"].astype(dtype), precision=self.precision)
        if self.use_bias:
            y = y + params["b"].astype(dtype)
        return y


@dataclasses.dataclass(frozen=True)
class Scale(ParamLayer):
    """A learned elementwise factor, ``y = x * factor`` (Torch's ``nn.Mul``/``nn.CMul``).

    Args:
      shape: the factor's shape, broadcast against the input's trailing axes;
        default ``None`` means one factor per feature of the last axis. ``()``
        gives a single scalar factor.
      factor_init: initialiser; default ones.
      dtype, param_dtype, name: as for `Dense`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> params = {"factor": jnp.array([20.0])}
      >>> nn.Scale().apply(params, jnp.array([[0.5]])).tolist()
      [[10.0]]
    """

    shape: tuple[int, ...] | None = None
    factor_init: Initializer = jax.nn.initializers.ones
    dtype: Any = None
    param_dtype: Any = jnp.float32
    name: str | None = None
    kind = "scale"

    def check_input(self, x: Spec, path: Path) -> None:
        require_float(x, path, "Scale")
        shape = self._shape(x)
        try:
            jnp.broadcast_shapes(shape, x.shape)
        except ValueError:
            raise ShapeError(
                f"Scale at {describe(path)}: factor of shape {shape} does not broadcast "
                f"against input of shape {tuple(x.shape)}"
            ) from None

    def _shape(self, x: Spec) -> tuple[int, ...]:
        if self.shape is not None:
            return tuple(self.shape)
        return tuple(x.shape[-1:])

    def param_specs(self, x: Spec, path: Path) -> dict[str, ParamSpec]:
        return {"factor": ParamSpec(self._shape(x), self.param_dtype, self.factor_init)}

    def forward(self, params: Params, x: Array, ctx: Context, path: Path) -> Array:
        dtype = compute_dtype(self.dtype, x, params["factor"])
        return x.astype(dtype) * params["factor"].astype(dtype)
