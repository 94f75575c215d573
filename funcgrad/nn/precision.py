"""Mixed precision in one line: parameters stored in float32, computed in bfloat16, outputs back in float32.

`mixed_precision(model)` wraps a whole model; gradients and the loss stay in the storage dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from funcgrad.errors import ConfigError
from funcgrad.nn.layer import (
    INIT_PARAM_CAST,
    Array,
    Context,
    Layer,
    Params,
    Path,
    SlotRequest,
    State,
    Wrapper,
    apply_child,
)


def _cast(tree: Any, dtype: Any) -> Any:
    """Floating-point leaves (arrays or specs) to ``dtype``; integers, booleans and keys as they are."""

    def cast(a: Any) -> Any:
        if not (hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating)):
            return a
        if isinstance(a, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(a.shape, dtype)
        return a.astype(dtype)

    return jax.tree.map(cast, tree)


@dataclasses.dataclass(frozen=True)
class MixedPrecision(Wrapper):
    """A layer run in ``compute`` dtype on parameters stored as they were made; made by `mixed_precision`."""

    compute: Any
    output: Any

    def _init(
        self, key: Array, x: Any, path: Path, shared: dict[str, Any]
    ) -> tuple[Params, State, Any]:
        # Output specs are computed with the parameters cast as `_apply` casts them, so residuals
        # and repeats inside see the compute dtype at init as they will at apply.
        token = INIT_PARAM_CAST.set(lambda p: _cast(p, self.compute))
        try:
            params, state, y = self.layer._init(key, _cast(x, self.compute), path, shared)
        finally:
            INIT_PARAM_CAST.reset(token)
        return params, state, _cast(y, self.output)

    def _init_slot(self, request: SlotRequest, params: Params | None, path: Path) -> State:
        if request.dtype is None:
            request = dataclasses.replace(request, dtype=self.compute)
        return self.layer._init_slot(request, params, path)

    def _apply(self, params: Params, state: State, x: Any, ctx: Context, path: Path) -> Any:
        # The casts are inside the differentiated function, so gradients come back in the
        # parameters' own dtype; shared parameters are cast where they are read.
        shared = _cast(dict(ctx.shared), self.compute)
        inner = dataclasses.replace(ctx, shared=shared)
        y, new_state = apply_child(
            self.layer, _cast(params, self.compute), state, _cast(x, self.compute), inner, path
        )
        return _cast(y, self.output), new_state


def mixed_precision(
    layer: Layer, compute: Any = jnp.bfloat16, output: Any = jnp.float32
) -> MixedPrecision:
    """Run ``layer`` (a whole model) in ``compute`` precision; its outputs come back as ``output``.

    Parameters keep the dtype they are made and stored in (float32 by default), so the
    optimizer updates float32 weights and gradients arrive in float32; inputs and
    parameters are cast to ``compute`` inside the model, and its result to ``output``, so
    the loss is computed in float32. Model state (batch-norm statistics) is left as it is.
    Keys and parameter trees are those of ``layer``.

    Any model can be wrapped, whatever comes first (a `residual`, a `shared` layer, a norm):
    ``init`` sees the parameters in ``compute`` dtype as ``apply`` does. What needs range stays
    in float32 under a bfloat16 policy: the statistics of `LayerNorm`, `RMSNorm` and
    `BatchNorm` (and its running state), and the softmax of `MultiHeadAttention`; their
    results come back in ``compute`` dtype.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> model = nn.mixed_precision(nn.serial(nn.Dense(8), nn.relu, nn.Dense(2)))
      >>> x = jnp.ones((4, 3), jnp.float32)
      >>> params = model.init(jax.random.key(0), x)
      >>> params["dense_0"]["w"].dtype, model.apply(params, x).dtype
      (dtype('float32'), dtype('float32'))
    """
    for name, dtype in (("compute", compute), ("output", output)):
        try:
            ok = jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
        except TypeError:
            ok = False
        if not ok:
            raise ConfigError(f"mixed_precision: {name} must be a floating dtype; got {dtype!r}")
    return MixedPrecision(layer, jnp.dtype(compute), jnp.dtype(output))
