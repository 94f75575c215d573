"""Normalisation layers: LayerNorm, RMSNorm, GroupNorm, InstanceNorm, and BatchNorm with its running statistics as state.

Statistics are computed in at least float32, whatever the compute dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from funcgrad.errors import ConfigError, ParamsError, ShapeError
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
    require_float,
    require_rank,
)
from funcgrad.paths import describe


def _stat_dtype(x: Array) -> Any:
    return jnp.promote_types(x.dtype, jnp.float32)


@dataclasses.dataclass(frozen=True)
class _FeatureNorm(ParamLayer):
    """Shared parameters of the norms: a per-feature ``scale`` (ones) and ``bias`` (zeros)."""

    epsilon: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True
    scale_init: Initializer = jax.nn.initializers.ones
    bias_init: Initializer = jax.nn.initializers.zeros
    dtype: Any = None
    param_dtype: Any = jnp.float32
    name: str | None = None

    def check_input(self, x: Spec, path: Path) -> None:
        require_float(x, path, type(self).__name__)
        require_rank(x, tuple(range(1, 33)), path, type(self).__name__, "(..., features)")

    def param_specs(self, x: Spec, path: Path) -> dict[str, ParamSpec]:
        return _affine_specs(self, x)

    def _affine(self, params: Params, y: Array, x: Array) -> Array:
        return _affine(self, params, y, x)


def _affine_specs(norm: Any, x: Spec) -> dict[str, ParamSpec]:
    """A norm's per-feature ``scale`` and ``bias`` specs, as its ``use_scale``/``use_bias`` say."""
    c = (x.shape[-1],)
    specs = {}
    if norm.use_scale:
        specs["scale"] = ParamSpec(c, norm.param_dtype, norm.scale_init)
    if norm.use_bias:
        specs["bias"] = ParamSpec(c, norm.param_dtype, norm.bias_init)
    return specs


def _affine(norm: Any, params: Params, y: Array, x: Array) -> Array:
    """``y * scale + bias`` in the norm's compute dtype."""
    dtype = norm.dtype or jnp.result_type(x, *params.values())
    y = y.astype(dtype)
    if norm.use_scale:
        y = y * params["scale"].astype(dtype)
    if norm.use_bias:
        y = y + params["bias"].astype(dtype)
    return y


@dataclasses.dataclass(frozen=True)
class LayerNorm(_FeatureNorm):
    """Normalise the last axis to zero mean and unit variance, then scale and shift.

    ``y = (x − mean) / sqrt(var + epsilon) * scale + bias``; epsilon 1e-5 as in PyTorch.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> ln = nn.LayerNorm()
      >>> x = jnp.array([[1.0, 3.0]])
      >>> ln.apply(ln.init(jax.random.key(0), x), x).round(3).tolist()
      [[-1.0, 1.0]]
    """

    kind = "layer_norm"

    def forward(self, params: Params, x: Array, ctx: Context, path: Path) -> Array:
        xs = x.astype(_stat_dtype(x))
        mean = jnp.mean(xs, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xs - mean), axis=-1, keepdims=True)
        return self._affine(params, (xs - mean) * jax.lax.rsqrt(var + self.epsilon), x)


@dataclasses.dataclass(frozen=True)
class RMSNorm(_FeatureNorm):
    """Divide the last axis by its root mean square, then scale: ``x / sqrt(mean(x²) + eps) * scale``.

    No bias by default (as in Gemma and Llama).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> rms = nn.RMSNorm()
      >>> x = jnp.array([[3.0, -3.0]])
      >>> rms.apply(rms.init(jax.random.key(0), x), x).round(3).tolist()
      [[1.0, -1.0]]
    """

    epsilon: float = 1e-6
    use_bias: bool = False
    kind = "rms_norm"

    def forward(self, params: Params, x: Array, ctx: Context, path: Path) -> Array:
        xs = x.astype(_stat_dtype(x))
        ms = jnp.mean(jnp.square(xs), axis=-1, keepdims=True)
        return self._affine(params, xs * jax.lax.rsqrt(ms + self.epsilon), x)


@dataclasses.dataclass(frozen=True)
class BatchNorm(_FeatureNorm):
    """Normalise each feature (last axis) over all other axes, with running statistics as state.

    In training mode (``train=True``, or a key given) it uses the batch's
    statistics and returns updated ones: ``running = momentum * running +
    (1 − momentum) * batch`` (Flax's convention; PyTorch's momentum 0.1 is 0.9
    here). In evaluation mode it uses the running statistics. The state is
    ``{"mean": (C,), "var": (C,)}``, made by ``init_with_state`` or ``init_state``.

    The running variance is the *biased* batch variance (divided by n, as Flax
    keeps it); PyTorch's ``running_var`` averages the unbiased one (divided by
    n − 1), so after training from scratch the two differ by about n/(n − 1).
    The batch itself is normalised by the biased variance in both. From
    ``torch.nn.BatchNorm2d(C, eps=e, momentum=m)``: ``BatchNorm(epsilon=e,
    momentum=1 − m)``; ``weight``/``bias`` are ``scale``/``bias``, and
    ``running_mean``/``running_var`` become ``state["mean"]``/``state["var"]``
    unchanged. See docs/pytorch.md.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> bn = nn.BatchNorm()
      >>> x = jnp.array([[0.0], [2.0]])
      >>> params, state = bn.init_with_state(jax.random.key(0), x)
      >>> y, state = bn.apply(params, x, state=state, train=True)
      >>> y.round(3).tolist(), round(float(state["mean"][0]), 3)
      ([[-1.0], [1.0]], 0.1)
    """

    momentum: float = 0.9
    kind = "batch_norm"

    def __post_init__(self) -> None:
        if not 0 <= self.momentum <= 1:
            raise ConfigError(f"BatchNorm: momentum must be in [0, 1]; got {self.momentum!r}")

    def initial_state(self, x: Spec) -> State:
        c = (x.shape[-1],)
        dtype = jnp.promote_types(self.param_dtype, jnp.float32)
        return {"mean": jnp.zeros(c, dtype), "var": jnp.ones(c, dtype)}

    def forward_with_state(
        self, params: Params, state: State, x: Array, ctx: Context, path: Path
    ) -> tuple[Array, State]:
        if not isinstance(state, dict) or set(state) != {"mean", "var"}:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ParamsError(
                f"BatchNorm at {describe(path)}: needs its state {{'mean', 'var'}} (from "
                f"init_with_state or init_state), passed as apply(..., state=...); got {got}"
            )
        xs = x.astype(_stat_dtype(x))
        if ctx.train:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(xs, axis=axes)
            var = jnp.mean(jnp.square(xs - mean), axis=axes)
            m = self.momentum
            new = {
                "mean": m * state["mean"] + (1 - m) * jax.lax.stop_gradient(mean),
                "var": m * state["var"] + (1 - m) * jax.lax.stop_gradient(var),
            }
            new = {k: v.astype(state[k].dtype) for k, v in new.items()}
        else:
            mean, var, new = state["mean"], state["var"], state
        y = self._affine(params, (xs - mean) * jax.lax.rsqrt(var + self.epsilon), x)
        return y, new


@dataclasses.dataclass(frozen=True)
class GroupNorm(ParamLayer):
    """Normalise each example over its spatial axes and groups of channels, then scale and shift.

    The channels (last axis, ``C``) are cut into ``num_groups`` contiguous groups of
    ``C / num_groups`` (or groups of ``group_size``); each example's mean and variance are
    taken over all its spatial positions and the channels of one group:
    ``y = (x − mean) / sqrt(var + epsilon) * scale + bias``, ``scale`` and ``bias`` per
    channel. Input ``(batch, *spatial, C)``, channels last; ``torch.nn.GroupNorm(G, C)``
    on the NCHW transpose gives the same numbers. Give exactly one of ``num_groups`` and
    ``group_size``; ``group_size=1`` is `InstanceNorm`.

    Args:
      num_groups: how many groups; must divide ``C``.
      group_size: channels per group, instead of ``num_groups``; must divide ``C``.
      epsilon, use_scale, use_bias, scale_init, bias_init, dtype, param_dtype, name:
        as `LayerNorm`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> gn = nn.GroupNorm(2)
      >>> x = jnp.array([[[1.0, 3.0, 0.0, 4.0]]])
      >>> gn.apply(gn.init(jax.random.key(0), x), x).round(3).tolist()
      [[[-1.0, 1.0, -1.0, 1.0]]]
    """

    num_groups: int | None = None
    group_size: int | None = None
    epsilon: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True
    scale_init: Initializer = jax.nn.initializers.ones
    bias_init: Initializer = jax.nn.initializers.zeros
    dtype: Any = None
    param_dtype: Any = jnp.float32
    name: str | None = None
    kind = "group_norm"
    min_rank: ClassVar[int] = 2

    def __post_init__(self) -> None:
        layer = type(self).__name__
        if (self.num_groups is None) == (self.group_size is None):
            raise ConfigError(
                f"{layer}: give exactly one of num_groups and group_size; got "
                f"num_groups={self.num_groups!r}, group_size={self.group_size!r}"
            )
        for field in ("num_groups", "group_size"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{layer}: {field} must be a positive int; got {value!r}")

    def _groups(self, channels: int) -> int:
        return self.num_groups or channels // (self.group_size or 1)

    def check_input(self, x: Spec, path: Path) -> None:
        layer = type(self).__name__
        require_float(x, path, layer)
        layout = "(batch, *spatial, channels)"
        require_rank(x, tuple(range(self.min_rank, 33)), path, layer, layout)
        c = x.shape[-1]
        if c % (self.num_groups or self.group_size or 1):
            what = (
                f"{self.num_groups} groups" if self.num_groups else f"groups of {self.group_size}"
            )
            raise ShapeError(
                f"{layer} at {describe(path)}: {c} channels do not split into {what}; "
                f"got input of shape {tuple(x.shape)}"
            )

    def param_specs(self, x: Spec, path: Path) -> dict[str, ParamSpec]:
        return _affine_specs(self, x)

    def forward(self, params: Params, x: Array, ctx: Context, path: Path) -> Array:
        g = self._groups(x.shape[-1])
        xs = x.astype(_stat_dtype(x)).reshape(*x.shape[:-1], g, x.shape[-1] // g)
        axes = (*range(1, x.ndim - 1), x.ndim)
        mean = jnp.mean(xs, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(xs - mean), axis=axes, keepdims=True)
        y = ((xs - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        return _affine(self, params, y, x)


@dataclasses.dataclass(frozen=True)
class InstanceNorm(GroupNorm):
    """`GroupNorm` with one channel per group: each example's channel normalised over its spatial axes.

    Input ``(batch, *spatial, C)`` with at least one spatial axis. Learns a per-channel
    ``scale`` and ``bias`` by default (as Flax); ``use_scale=False, use_bias=False`` is
    ``torch.nn.InstanceNorm2d``'s default ``affine=False``. Running statistics are not kept.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> norm = nn.InstanceNorm(use_scale=False, use_bias=False)
      >>> x = jnp.array([[[1.0, 5.0], [3.0, 7.0]]])
      >>> norm(x).round(3).tolist()
      [[[-1.0, -1.0], [1.0, 1.0]]]
    """

    group_size: int | None = 1
    kind = "instance_norm"
    min_rank: ClassVar[int] = 3
