"""Multi-head dot-product attention: self- and cross-attention, with a causal flag or a boolean mask.

The softmax is funcgrad's masked one, in the input's precision (at least float32): a fully masked row gives 0.
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
    compute_dtype,
    path_str,
    require_float,
)
from funcgrad.primitives.stable import softmax


@dataclasses.dataclass(frozen=True)
class MultiHeadAttention(ParamLayer):
    """Multi-head attention over ``(batch, length, features)`` inputs.

    The input is ``x`` (self-attention), ``(x, context)`` (cross-attention:
    queries from ``x``, keys and values from ``context``) or ``(x, context,
    mask)`` with a boolean ``mask`` broadcastable to ``(batch, heads, q_len,
    kv_len)``, True where attention is allowed.

    Parameters: ``wq`` ``(d, heads, head_dim)``, ``wk``/``wv`` ``(d_context,
    heads, head_dim)``, ``wo`` ``(heads, head_dim, out_features)`` and biases
    ``bq``, ``bk``, ``bv`` ``(heads, head_dim)``, ``bo`` ``(out_features,)``.

    Args:
      num_heads: number of heads; ``qkv_features`` must divide by it.
      qkv_features: total query/key/value width; default the input width.
      out_features: output width; default the input width.
      causal: mask out attention to later positions.
      use_bias, w_init, dtype, param_dtype, name: as for `Dense` (default
        kernel init LeCun normal).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> mha = nn.MultiHeadAttention(num_heads=2, causal=True)
      >>> x = jnp.zeros((1, 5, 8))
      >>> mha.apply(mha.init(jax.random.key(0), x), x).shape
      (1, 5, 8)
    """

    num_heads: int
    qkv_features: int | None = None
    out_features: int | None = None
    causal: bool = False
    use_bias: bool = True
    w_init: Initializer = jax.nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
    dtype: Any = None
    param_dtype: Any = jnp.float32
    name: str | None = None
    kind = "attention"

    @staticmethod
    def _split(x: Any) -> tuple[Any, Any, Any]:
        if isinstance(x, (tuple, list)):
            if len(x) == 2:
                return x[0], x[1], None
            if len(x) == 3:
                return x[0], x[1], x[2]
        return x, x, None

    def check_input(self, x: Any, path: Path) -> None:
        q, kv, mask = self._split(x)
        where = f"MultiHeadAttention at {path_str(path)}"
        for name, a in (("query input", q), ("context", kv)):
            require_float(a, path, "MultiHeadAttention")
            if a.ndim != 3:
                raise ShapeError(
                    f"{where}: {name} must be (batch, length, features); got shape {tuple(a.shape)}"
                )
        if q.shape[0] != kv.shape[0]:
            raise ShapeError(
                f"{where}: query batch {q.shape[0]} differs from context batch {kv.shape[0]}"
            )
        width = self.qkv_features or q.shape[-1]
        if width % self.num_heads:
            raise ConfigError(f"{where}: {width} features do not split into {self.num_heads} heads")
        if mask is not None:
            full = (q.shape[0], self.num_heads, q.shape[1], kv.shape[1])
            try:
                ok = jnp.broadcast_shapes(mask.shape, full) == full
            except ValueError:
                ok = False
            if not ok or mask.dtype != jnp.bool_:
                raise ShapeError(
                    f"{where}: mask must be boolean and broadcast to {full}; got "
                    f"{mask.dtype}{tuple(mask.shape)}"
                )

    def param_specs(self, x: Any, path: Path) -> dict[str, ParamSpec]:
        q, kv, _ = self._split(x)
        width = self.qkv_features or q.shape[-1]
        h, hd, out = self.num_heads, width // self.num_heads, self.out_features or q.shape[-1]
        zeros, pd = jax.nn.initializers.zeros, self.param_dtype
        out_init = jax.nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
        specs = {
            "wq": ParamSpec((q.shape[-1], h, hd), pd, self.w_init),
            "wk": ParamSpec((kv.shape[-1], h, hd), pd, self.w_init),
            "wv": ParamSpec((kv.shape[-1], h, hd), pd, self.w_init),
            "wo": ParamSpec((h, hd, out), pd, out_init),
        }
        if self.use_bias:
            specs |= {f"b{n}": ParamSpec((h, hd), pd, zeros) for n in "qkv"}
            specs["bo"] = ParamSpec((out,), pd, zeros)
        return specs

    def forward(self, params: Params, x: Any, ctx: Context, path: Path) -> Array:
        q, kv, mask = self._split(x)
        dtype = compute_dtype(self.dtype, q, kv, *params.values())
        p = {k: v.astype(dtype) for k, v in params.items()}
        q, kv = q.astype(dtype), kv.astype(dtype)

        def project(a: Array, n: str) -> Array:
            y = jnp.einsum("btd,dhk->bthk", a, p[f"w{n}"])
            return y + p[f"b{n}"] if self.use_bias else y

        y = attend(project(q, "q"), project(kv, "k"), project(kv, "v"), mask, self.causal)
        y = jnp.einsum("bthk,hko->bto", y, p["wo"])
        return y + p["bo"] if self.use_bias else y


def attend(q: Array, k: Array, v: Array, mask: Array | None, causal: bool) -> Array:
    """softmax(q·kᵀ/√d) v over ``(batch, length, heads, head_dim)``, masked where ``mask`` is False.

    `jax.nn.dot_product_attention` always takes its softmax in float32, which
    would cap a float64 model's precision; this keeps the input's precision.
    """
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    logits = logits.astype(jnp.promote_types(q.dtype, jnp.float32))
    allowed = jnp.ones(logits.shape, bool) if mask is None else jnp.broadcast_to(mask, logits.shape)
    if causal:
        allowed = allowed & jnp.tril(jnp.ones(logits.shape[-2:], bool), k.shape[1] - q.shape[1])
    weights = softmax(logits, axis=-1, where=allowed).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)
