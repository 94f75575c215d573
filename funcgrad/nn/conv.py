"""N-d convolution and transposed convolution (1-, 2- and 3-d, channels last) from one implementation.

Kernels are ``(*kernel_size, in_features // groups, features)``; XLA's conv_general_dilated does the work.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from funcgrad.errors import ConfigError, ShapeError
from funcgrad.nn.checks import channels_last_hint
from funcgrad.nn.layer import (
    Array,
    Context,
    Initializer,
    ParamLayer,
    Params,
    ParamSpec,
    Path,
    Spec,
    State,
    compute_dtype,
    require_float,
)
from funcgrad.nn.loops import in_loop_body
from funcgrad.nn.window import Padding, padding_arg, per_axis
from funcgrad.paths import describe

_SPATIAL = {1: "W", 2: "HW", 3: "DHW"}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _loop_conv(
    x: Array, w: Array, strides: tuple[int, ...], pads: tuple[tuple[int, int], ...], precision: Any
) -> Array:
    """A stride-s, undilated, ungrouped channels-last convolution whose kernel gradient is a
    plain NHWC/HWIO convolution between transposed operands.

    JAX's transpose rule writes the kernel gradient as one convolution with permuted dimension
    numbers. XLA:CPU runs that form at its usual speed in a straight-line program, but inside a
    while loop (`make_multistep`, `fit(fused=)`, `repeat`) it falls to a path about 90 times
    slower (measured: 2.6 s against 28 ms for a 64×28×28×32 → 64 layer). Spelling it with
    explicit transposes keeps it fast in loops (51 ms), so loop bodies use this form.
    """
    return _conv(x, w, strides, pads, precision)


def _conv(x: Array, w: Array, strides: Any, pads: Any, precision: Any) -> Array:
    nd = x.ndim - 2
    sp = _SPATIAL[nd]
    return lax.conv_general_dilated(
        x,
        w,
        strides,
        pads,
        dimension_numbers=(f"N{sp}C", f"{sp}IO", f"N{sp}C"),
        precision=precision,
    )


def _loop_conv_fwd(
    x: Array, w: Array, strides: Any, pads: Any, precision: Any
) -> tuple[Array, Any]:
    return _conv(x, w, strides, pads, precision), (x, w)


def _loop_conv_bwd(
    strides: Any, pads: Any, precision: Any, res: Any, g: Array
) -> tuple[Array, Array]:
    x, w = res
    nd = x.ndim - 2
    sp = _SPATIAL[nd]
    _, x_vjp = jax.vjp(lambda v: _conv(v, w, strides, pads, precision), x)
    (dx,) = x_vjp(g)
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    lhs = jnp.moveaxis(xp, (0, nd + 1), (nd + 1, 0))  # (C, *spatial, N): C images of N channels
    rhs = jnp.moveaxis(g, 0, nd)  # (*out_spatial, N, O): the output gradient as a kernel
    dw = lax.conv_general_dilated(
        lhs, rhs, (1,) * nd, "VALID", rhs_dilation=strides,
        dimension_numbers=(f"N{sp}C", f"{sp}IO", f"N{sp}C"), precision=precision,
    )  # fmt: skip
    dw = dw[(slice(None), *(slice(0, k) for k in w.shape[:nd]))]  # strides may leave a remainder
    return dx, jnp.moveaxis(dw, 0, nd).astype(w.dtype)


_loop_conv.defvjp(_loop_conv_fwd, _loop_conv_bwd)


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
            raise ConfigError(f"{layer} at {describe(path)}: 1, 2 or 3 spatial dims; got {nd}")
        if x.ndim != nd + 2:
            raise ShapeError(
                f"{layer} at {describe(path)}: a {nd}-d convolution expects input of rank "
                f"{nd + 2} (batch, {', '.join(_SPATIAL[nd])}, channels); got shape {tuple(x.shape)}"
            )
        if x.shape[-1] % self.groups or self.features % self.groups:
            raise ConfigError(
                f"{layer} at {describe(path)}: groups={self.groups} must divide the input "
                f"channels ({x.shape[-1]}) and features ({self.features})"
            )

    def _apply(self, params: Params, state: State, x: Any, ctx: Context, path: Path) -> Any:
        self._check_channel_order(params, x, path)
        return super()._apply(params, state, x, ctx, path)

    def _check_channel_order(self, params: Any, x: Any, path: Path) -> None:
        """Name the likely cause when the input looks channels-first (NCHW) against ``params``."""
        w = params.get("w") if isinstance(params, dict) else None
        shape = tuple(jnp.shape(x)) if hasattr(x, "shape") else ()
        if w is None or jnp.ndim(w) < 3 or len(shape) < 3:
            return
        channels = jnp.shape(w)[-2] * self.groups
        hint = channels_last_hint(shape, channels)
        if hint:
            raise ShapeError(
                f"{type(self).__name__} at {describe(path)}: the parameters expect {channels} "
                f"input channels, which the input has on axis 1, not on the last axis; {hint}"
            )

    def param_specs(self, x: Spec, path: Path) -> dict[str, ParamSpec]:
        nd = self._nd(x)
        k = per_axis(self.kernel_size, nd, "kernel_size", type(self).__name__)
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
        strides = per_axis(self.strides, nd, "strides", layer)
        dilation = per_axis(self.dilation, nd, "dilation", layer)
        padding = padding_arg(self.padding, nd, layer)
        if self.transpose:
            y = lax.conv_transpose(
                x, w, strides, padding, rhs_dilation=dilation,
                dimension_numbers=numbers, precision=self.precision,
            )  # fmt: skip
        elif in_loop_body() and self.groups == 1 and set(dilation) == {1}:
            pads = (
                lax.padtype_to_pads(x.shape[1:-1], w.shape[:nd], strides, padding)
                if isinstance(padding, str)
                else padding
            )
            y = _loop_conv(x, w, strides, tuple(tuple(p) for p in pads), self.precision)
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

    Padding means what it means to `jax.lax.conv_transpose`, not what it means to
    PyTorch: the input is dilated by the stride, padded by ``(low, high)`` (an int
    ``p`` is ``(p, p)``), then convolved (VALID) with the kernel, unflipped. Each
    spatial output size is ``(in − 1)·stride + 1 + low + high − dilation·(k − 1)``.
    From ``torch.nn.ConvTranspose2d(cin, cout, k, stride=s, padding=p,
    output_padding=q, dilation=d)``: ``ConvTranspose(cout, (k, k), strides=s,
    dilation=d, padding=[(d·(k−1) − p, d·(k−1) − p + q)] * 2)``, with kernel
    ``w = weight[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)`` (flipped, ``(kh, kw,
    cin, cout)``). An int ``padding`` agrees with PyTorch's only when
    ``p = d·(k − 1)/2``. See docs/pytorch.md.

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
