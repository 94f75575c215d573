"""Normalisation layers: LayerNorm, RMSNorm, and BatchNorm with its running statistics as explicit state.

Statistics are computed in at least float32, whatever the compute dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from funcgrad.errors import ConfigError, ParamsError
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
    path_str,
    require_float,
    require_rank,
)


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
        c = (x.shape[-1],)
        specs = {}
        if self.use_scale:
            specs["scale"] = ParamSpec(c, self.param_dtype, self.scale_init)
        if self.use_bias:
            specs["bias"] = ParamSpec(c, self.param_dtype, self.bias_init)
        return specs

    def _affine(self, params: Params, y: Array, x: Array) -> Array:
        dtype = self.dtype or jnp.result_type(x, *params.values())
        y = y.astype(dtype)
        if self.use_scale:
            y = y * params["scale"].astype(dtype)
        if self.use_bias:
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
                f"BatchNorm at {path_str(path)}: needs its state {{'mean', 'var'}} (from "
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
