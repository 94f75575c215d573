"""Dot-product attention: the `attention` function (fused or precise) and the `MultiHeadAttention` layer.

The layer does self- and cross-attention, grouped-query heads, rotary positions and key/value-cached decoding.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcgrad.errors import ConfigError, DTypeError, InputTypeError, ShapeError
from funcgrad.nn.layer import (
    Array,
    Context,
    Initializer,
    ParamLayer,
    Params,
    ParamSpec,
    Path,
    SlotRequest,
    State,
    compute_dtype,
    require_float,
)
from funcgrad.nn.rotary import RopeScaling, rotary, segment_positions
from funcgrad.paths import describe
from funcgrad.primitives.stable import softmax


def attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    mask: Array | None = None,
    causal: bool = False,
    scale: float | None = None,
    fused: bool | None = None,
    q_lengths: Array | None = None,
    kv_lengths: Array | None = None,
    segment_ids: Any = None,
    window: tuple[int, int] | None = None,
) -> Array:
    """softmax(q·kᵀ·scale) v over ``(batch, length, heads, head_dim)`` arrays.

    ``k`` and ``v`` may have fewer heads than ``q`` (grouped-query / multi-query
    attention): query head ``i`` reads key/value head ``i // (q_heads // kv_heads)``.

    Every restriction below narrows the keys a query may attend to; they combine (all must
    allow a key). Lengths, causality and the window go to `jax.nn.dot_product_attention` as
    its own arguments (``query_seq_lengths``, ``key_value_seq_lengths``, ``is_causal``,
    ``local_window_size``) where they mean the same, so cuDNN can serve them on a GPU; only
    ``mask`` and the segments become a mask array.

    Args:
      q: queries ``(batch, q_len, heads, head_dim)``.
      k, v: keys and values ``(batch, kv_len, kv_heads, head_dim)``.
      mask: boolean, broadcastable to ``(batch, heads, q_len, kv_len)``, True where a
        query may attend to a key.
      causal: query ``i`` attends to keys ``j <= i + kv_len - q_len`` (the diagonal aligned
        bottom-right, so the last query sees every key, as in cached decoding).
      scale: the logit factor; default ``1/sqrt(head_dim)``.
      fused: use `jax.nn.dot_product_attention` (cuDNN's flash kernel on GPU where it
        applies, XLA's lowering elsewhere). Default (None): fused for bfloat16 and float16
        (float16 on CPU stays precise, XLA:CPU rejects it there), precise for float32 and
        float64. The precise path takes the softmax in the input's precision (at least
        float32); the fused one in float32, so ``fused=True`` is a speed-for-accuracy choice
        for float32 and refused for float64.
      q_lengths, kv_lengths: padding, integer ``(batch,)``: queries at index
        ``>= q_lengths[b]`` are padding and get 0; keys at index ``>= kv_lengths[b]`` are
        never attended to.
      segment_ids: packed sequences, integer ids, one per token: a query attends only to
        keys of its own segment. Either one ``(batch, length)`` array for self-attention
        (``q_len == kv_len``, the same ids for queries and keys), or a pair
        ``(q_segment_ids, kv_segment_ids)`` shaped ``(batch, q_len)`` and
        ``(batch, kv_len)``.
      window: ``(left, right)`` non-negative ints, a sliding window: query ``i`` attends to
        keys ``i' - left <= j <= i' + right`` with ``i' = i + kv_len - q_len`` (aligned
        bottom-right, as ``causal``). With ``causal=True`` only ``left`` matters
        (``window=(w, 0)`` is the usual causal sliding window of ``w + 1`` keys).

    A query whose keys are all masked out (a padded query, say) gets 0 (not NaN, and not
    the mean of ``v``), on both paths.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcgrad import nn
      >>> q = jnp.ones((1, 3, 4, 8))
      >>> kv = jnp.ones((1, 5, 2, 8))  # 2 key/value heads shared by 4 query heads
      >>> nn.attention(q, kv, kv, causal=True).shape
      (1, 3, 4, 8)
      >>> y = nn.attention(q, kv, kv, q_lengths=jnp.array([2]), window=(1, 0))
      >>> y[0, 2].tolist() == jnp.zeros((4, 8)).tolist()  # the padded query gets 0
      True
    """
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    _check(q, k, v, mask)
    where = "nn.attention"
    q_lengths = _check_lengths(q_lengths, q.shape[:2], "q_lengths", where)
    kv_lengths = _check_lengths(kv_lengths, k.shape[:2], "kv_lengths", where)
    segments = _check_segments(segment_ids, q.shape[:2], k.shape[1], where)
    window = _check_window(window, where)
    if causal and window is not None:
        window = (window[0], 0)
    scale = 1.0 / float(q.shape[-1]) ** 0.5 if scale is None else scale
    square = q.shape[1] == k.shape[1]
    if not _use_fused(fused, q.dtype):
        allowed = _allowed(q, k, mask, causal, window, q_lengths, kv_lengths, segments)
        return _precise(q, k, v, allowed, scale)
    # jax's causal mask and window are aligned top-left: funcgrad's bottom-right alignment
    # when the lengths are equal; otherwise they join the mask.
    explicit = _allowed(
        q, k, mask, causal and not square, None if square else window, None, None, segments
    )
    call = functools.partial(
        jax.nn.dot_product_attention,
        q,
        k,
        v,
        mask=explicit,
        scale=scale,
        is_causal=causal and square,
        local_window_size=window if square else None,
        query_seq_lengths=None if q_lengths is None else q_lengths.astype(jnp.int32),
        key_value_seq_lengths=None if kv_lengths is None else kv_lengths.astype(jnp.int32),
    )
    y = _cudnn(call)
    if y is None:
        y = call()
    allowed = _allowed(q, k, mask, causal, window, q_lengths, kv_lengths, segments)
    if allowed is None or (explicit is None and q_lengths is None and kv_lengths is None):
        return y  # square causal and windows leave every query a key (itself)
    # The fused call gives a fully masked row the mean of v (or what cuDNN leaves); ours is 0.
    live = jnp.moveaxis(jnp.any(allowed, axis=-1), 1, 2)[..., None]
    return jnp.where(live, y, jnp.zeros((), y.dtype))


def _allowed(
    q: Array,
    k: Array,
    mask: Any,
    causal: bool,
    window: tuple[int, int] | None,
    q_lengths: Array | None,
    kv_lengths: Array | None,
    segments: tuple[Array, Array] | None,
) -> Array | None:
    """The boolean ``(batch or 1, heads or 1, q_len, kv_len)`` mask of all restrictions; None if none."""
    t, s = q.shape[1], k.shape[1]
    rows = jnp.arange(t)[:, None] + (s - t)  # the bottom-right alignment
    cols = jnp.arange(s)[None, :]
    parts = [] if mask is None else [jnp.asarray(mask)]
    if causal:
        parts.append(cols <= rows)
    if window is not None:
        parts.append((cols >= rows - window[0]) & (cols <= rows + window[1]))
    if q_lengths is not None:
        parts.append((jnp.arange(t) < q_lengths[:, None])[:, None, :, None])
    if kv_lengths is not None:
        parts.append((jnp.arange(s) < kv_lengths[:, None])[:, None, None, :])
    if segments is not None:
        parts.append((segments[0][:, :, None] == segments[1][:, None, :])[:, None])
    if not parts:
        return None
    parts = [p.reshape((1,) * (4 - p.ndim) + p.shape) for p in parts]
    return functools.reduce(jnp.logical_and, parts)


def _cudnn(call: Callable[..., Array]) -> Array | None:
    """cuDNN's flash attention on a GPU, where it takes these shapes and masks; None elsewhere.

    ``call`` is `jax.nn.dot_product_attention` with its arguments, which picks XLA's own
    lowering unless asked for cuDNN; cuDNN refuses (a ValueError before anything runs) what
    it lacks: some shapes and dtypes, a window reaching right without ``is_causal``.
    """
    if jax.default_backend() != "gpu":
        return None
    try:
        return call(implementation="cudnn")
    except (ValueError, NotImplementedError, RuntimeError):  # a shape or dtype cuDNN lacks
        return None


def _concrete(a: Any) -> Any:
    """``a`` as a NumPy array when its values are known (not traced under jit); else None."""
    if isinstance(a, jax.core.Tracer):
        return None
    try:
        return np.asarray(a)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return None


def _check_lengths(lengths: Any, shape: tuple[int, ...], name: str, where: str) -> Array | None:
    """``lengths`` as an integer ``(batch,)`` array, each in ``0..length``, or a clear error.

    ``shape`` is ``(batch, length)`` of the sequence they count; traced values are checked
    for shape and dtype only.
    """
    if lengths is None:
        return None
    if not hasattr(lengths, "dtype"):
        lengths = jnp.asarray(lengths)
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise DTypeError(f"{where}: {name} must be integers; got dtype {lengths.dtype}")
    if tuple(lengths.shape) != (shape[0],):
        raise ShapeError(
            f"{where}: {name} must have shape (batch,) = ({shape[0]},); got {tuple(lengths.shape)}"
        )
    values = None if isinstance(lengths, jax.ShapeDtypeStruct) else _concrete(lengths)
    if values is not None and values.size and not (0 <= values.min() and values.max() <= shape[1]):
        raise ShapeError(
            f"{where}: {name} must lie in 0..{shape[1]} (the sequence length); got "
            f"{values.tolist()}"
        )
    return lengths


def _check_segments(
    segment_ids: Any, q_shape: tuple[int, ...], kv_len: int, where: str
) -> tuple[Array, Array] | None:
    """Segment ids as ``(query ids, key ids)``, checked against the lengths."""
    if segment_ids is None:
        return None
    if isinstance(segment_ids, (tuple, list)):
        if len(segment_ids) != 2:
            raise InputTypeError(
                f"{where}: segment_ids must be one (batch, length) array or a pair "
                f"(q_segment_ids, kv_segment_ids); got a sequence of {len(segment_ids)}"
            )
        q_ids, kv_ids = segment_ids
    elif q_shape[1] != kv_len:
        raise ShapeError(
            f"{where}: one segment_ids array serves self-attention (q_len == kv_len); q_len "
            f"{q_shape[1]} and kv_len {kv_len} differ: pass (q_segment_ids, kv_segment_ids)"
        )
    else:
        q_ids = kv_ids = segment_ids
    q_ids = _check_segment_ids(q_ids, q_shape, where)
    kv_ids = _check_segment_ids(kv_ids, (q_shape[0], kv_len), where)
    return q_ids, kv_ids


def _check_segment_ids(ids: Any, shape: tuple[int, ...], where: str) -> Array:
    """``ids`` as an integer array of ``shape`` ``(batch, length)``, or a clear error."""
    if not hasattr(ids, "shape"):
        try:
            ids = jnp.asarray(ids)
        except (TypeError, ValueError) as e:
            raise InputTypeError(
                f"{where}: segment_ids must be an integer array; got {type(ids).__name__}"
            ) from e
    if tuple(ids.shape) != tuple(shape):
        raise ShapeError(
            f"{where}: segment_ids must be (batch, length) = {tuple(shape)}; got {tuple(ids.shape)}"
        )
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise DTypeError(f"{where}: segment_ids must be integers; got dtype {ids.dtype}")
    return jnp.asarray(ids)


def _check_window(window: Any, where: str) -> tuple[int, int] | None:
    """``window`` as ``(left, right)`` non-negative ints (None stays None), or a ConfigError."""
    if window is None:
        return None
    ok = (
        isinstance(window, (tuple, list))
        and len(window) == 2
        and all(isinstance(w, (int, np.integer)) and not isinstance(w, bool) for w in window)
        and all(w >= 0 for w in window)
    )
    if not ok:
        raise ConfigError(
            f"{where}: window must be a pair (left, right) of non-negative ints; got {window!r}"
        )
    return int(window[0]), int(window[1])


def _check(q: Array, k: Array, v: Array, mask: Any) -> None:
    for name, a in (("q", q), ("k", k), ("v", v)):
        if a.ndim != 4:
            raise ShapeError(
                f"nn.attention: {name} must be (batch, length, heads, head_dim); got shape "
                f"{tuple(a.shape)}"
            )
        if not jnp.issubdtype(a.dtype, jnp.inexact):
            raise DTypeError(f"nn.attention: {name} must be floating point; got {a.dtype}")
    if k.shape != v.shape:
        raise ShapeError(f"nn.attention: k {tuple(k.shape)} and v {tuple(v.shape)} differ")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ShapeError(
            f"nn.attention: q {tuple(q.shape)} and k {tuple(k.shape)} must agree on batch and "
            "head_dim"
        )
    if q.shape[2] % k.shape[2]:
        raise ShapeError(
            f"nn.attention: {q.shape[2]} query heads do not split into groups over "
            f"{k.shape[2]} key/value heads"
        )
    if mask is not None:
        full = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
        shape, dtype = jnp.shape(mask), jnp.result_type(mask)
        try:
            ok = len(shape) <= 4 and jnp.broadcast_shapes(shape, full) == full
        except ValueError:
            ok = False
        if not ok or dtype != jnp.bool_:
            raise ShapeError(
                f"nn.attention: mask must be boolean and broadcast to {full} (batch, heads, "
                f"q_len, kv_len); got {dtype}{tuple(shape)}"
            )


def _use_fused(fused: bool | None, dtype: Any) -> bool:
    cpu_f16 = dtype == jnp.float16 and jax.default_backend() == "cpu"
    if fused is None:
        return dtype == jnp.bfloat16 or (dtype == jnp.float16 and not cpu_f16)
    if fused and dtype == jnp.float64:
        raise ConfigError(
            "nn.attention: fused=True takes its softmax in float32; float64 keeps the precise "
            "path (fused=None or False)"
        )
    if fused and cpu_f16:
        raise ConfigError(
            "nn.attention: XLA:CPU has no fused float16 attention; use bfloat16 or fused=None"
        )
    return bool(fused)


def _precise(q: Array, k: Array, v: Array, allowed: Array | None, scale: float) -> Array:
    """The softmax in the input's precision (at least float32), grouped heads without copying k/v."""
    b, t, h, d = q.shape
    s, kv_heads = k.shape[1], k.shape[2]
    g = h // kv_heads
    logits = jnp.einsum("btkgd,bskd->bkgts", q.reshape(b, t, kv_heads, g, d), k)
    logits = (logits * jnp.asarray(scale, logits.dtype)).reshape(b, h, t, s)
    logits = logits.astype(jnp.promote_types(q.dtype, jnp.float32))
    where = None if allowed is None else jnp.broadcast_to(allowed, logits.shape)
    weights = softmax(logits, axis=-1, where=where).astype(v.dtype)
    y = jnp.einsum("bkgts,bskd->btkgd", weights.reshape(b, kv_heads, g, t, s), v)
    return y.reshape(b, t, h, d)


@dataclasses.dataclass(frozen=True)
class MultiHeadAttention(ParamLayer):
    """Multi-head attention over ``(batch, length, features)`` inputs.

    The input is ``x`` (self-attention), ``(x, context)`` (cross-attention:
    queries from ``x``, keys and values from ``context``) or ``(x, context,
    mask)`` with a boolean ``mask`` broadcastable to ``(batch, heads, q_len,
    kv_len)``, True where attention is allowed.

    Padding, as for the recurrent layers: the input ``(x, lengths)``, ``lengths`` integer
    ``(batch,)``, is self-attention over the first ``lengths[b]`` tokens of each row; it
    gives ``(y, lengths)`` (so `serial` hands the lengths on) with padded positions 0.
    Packed sequences: ``apply(..., segment_ids=ids)`` (``(batch, length)`` ints) keeps each
    token's self-attention within its segment, and with ``rope`` its position restarts at
    each segment (`segment_positions`). ``window=(left, right)`` is a sliding window
    (see `attention`; with ``causal``, ``(w, 0)`` sees the ``w`` tokens before and itself,
    also when decoding).

    Parameters: ``wq`` ``(d, heads, head_dim)``, ``wk``/``wv`` ``(d_context,
    kv_heads, head_dim)``, ``wo`` ``(heads, head_dim, out_features)`` and biases
    ``bq`` ``(heads, head_dim)``, ``bk``, ``bv`` ``(kv_heads, head_dim)``, ``bo``
    ``(out_features,)``.

    Decoding: ``state = init_cache(batch, max_length, params=params)`` makes a key/value
    cache (zeros, ``{"k", "v"}`` each ``(batch, max_length, kv_heads, head_dim)``), and
    ``y, state = apply(params, x, state=state, position=t)`` attends causally from the
    tokens ``x`` (at positions ``t, t+1, ...``) to the cached ones before them and to
    themselves. The cache is the layer's state, so every combinator passes it through and
    the same calls work on a whole model. ``t + x.shape[1] > max_length`` is a `ShapeError`
    for a concrete ``t``; under jit a traced ``t`` cannot be checked (see `Layer.init_cache`).

    Args:
      num_heads: number of query heads; ``qkv_features`` must divide by it.
      qkv_features: total query/key/value width; default the input width.
      out_features: output width; default the input width.
      causal: mask out attention to later positions (always on when decoding).
      use_bias: biases on all four projections (True), none (False), or a tuple of the
        projections that have one, from ``"q", "k", "v", "o"`` (Qwen2: ``("q", "k", "v")``).
      w_init, dtype, param_dtype, name: as for `Dense` (default kernel init LeCun normal).
      num_kv_heads: key/value heads (grouped-query attention; 1 is multi-query);
        must divide ``num_heads``. Default: ``num_heads``.
      rope: rotate queries and keys by their positions (`funcgrad.nn.rotary`, half-split
        pairs) with base ``rope_base``; positions count from 0 in ``x`` and in the context.
      rope_scaling: a `funcgrad.nn.RopeScaling` of the rotary frequencies (Llama 3.1's).
      fused: passed to `attention` (default: fused for half precision only).
      window: ``(left, right)`` non-negative ints, passed to `attention`; None for none.

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
    use_bias: bool | tuple[str, ...] = True
    w_init: Initializer = jax.nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
    dtype: Any = None
    param_dtype: Any = jnp.float32
    name: str | None = None
    num_kv_heads: int | None = None
    rope: bool = False
    rope_base: float = 10000.0
    fused: bool | None = None
    rope_scaling: RopeScaling | None = None
    window: tuple[int, int] | None = None
    kind = "attention"

    def __post_init__(self) -> None:
        kv = self.kv_heads
        if not (isinstance(kv, int) and kv >= 1 and self.num_heads % kv == 0):
            raise ConfigError(
                f"MultiHeadAttention: num_kv_heads={self.num_kv_heads} must be a positive "
                f"divisor of num_heads={self.num_heads}"
            )
        # A tuple of ints, so the layer stays hashable (a static argument of jit).
        object.__setattr__(self, "window", _check_window(self.window, "MultiHeadAttention"))

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @staticmethod
    def _split(x: Any) -> tuple[Any, Any, Any]:
        """``(queries' input, context, mask)``; a ``(x, lengths)`` input is self-attention."""
        return MultiHeadAttention._parts(x)[:3]

    @staticmethod
    def _parts(x: Any) -> tuple[Any, Any, Any, Any]:
        """``(queries' input, context, mask, lengths)`` of any input form."""
        if isinstance(x, (tuple, list)):
            if len(x) == 2 and _is_lengths(x[1]):
                return x[0], x[0], None, x[1]
            if len(x) == 2:
                return x[0], x[1], None, None
            if len(x) == 3:
                return x[0], x[1], x[2], None
        return x, x, None, None

    def _head_dim(self, width: int, where: str) -> int:
        if width % self.num_heads:
            raise ConfigError(f"{where}: {width} features do not split into {self.num_heads} heads")
        head_dim = width // self.num_heads
        if self.rope and head_dim % 2:
            raise ConfigError(f"{where}: rope needs an even head_dim; got {head_dim}")
        return head_dim

    def _rope(self, x: Array, positions: Any) -> Array:
        """Rotate queries or keys ``(batch, length, heads, head_dim)`` by their positions."""
        return rotary(x, positions, base=self.rope_base, scaling=self.rope_scaling)

    def check_input(self, x: Any, path: Path) -> None:
        q, kv, mask, lengths = self._parts(x)
        where = f"MultiHeadAttention at {describe(path)}"
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
        self._head_dim(self.qkv_features or q.shape[-1], where)
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
        _check_lengths(lengths, q.shape[:2], "lengths", where)

    def param_specs(self, x: Any, path: Path) -> dict[str, ParamSpec]:
        q, kv, _ = self._split(x)
        width = self.qkv_features or q.shape[-1]
        h, hd, out = self.num_heads, width // self.num_heads, self.out_features or q.shape[-1]
        zeros, pd, g = jax.nn.initializers.zeros, self.param_dtype, self.kv_heads
        out_init = jax.nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
        specs = {
            "wq": ParamSpec((q.shape[-1], h, hd), pd, self.w_init),
            "wk": ParamSpec((kv.shape[-1], g, hd), pd, self.w_init),
            "wv": ParamSpec((kv.shape[-1], g, hd), pd, self.w_init),
            "wo": ParamSpec((h, hd, out), pd, out_init),
        }
        names = "qkvo" if self.use_bias is True else self.use_bias or ()
        if not (isinstance(names, (str, tuple)) and set(names) <= set("qkvo")):
            raise ConfigError(
                f"MultiHeadAttention at {describe(path)}: use_bias must be True, False or a tuple "
                f"of projection names from ('q', 'k', 'v', 'o'); got {self.use_bias!r}"
            )
        shapes = {"q": (h, hd), "k": (g, hd), "v": (g, hd), "o": (out,)}
        return specs | {f"b{n}": ParamSpec(shapes[n], pd, zeros) for n in "qkvo" if n in names}

    def _init_slot(self, request: SlotRequest, params: Params | None, path: Path) -> State:
        if request.what != "cache":
            return {}
        where = f"MultiHeadAttention at {describe(path)}"
        dtype = request.dtype or self.dtype or self.param_dtype
        shape = (request.batch, request.max_length)
        if isinstance(params, dict) and "wk" in params and jnp.ndim(params["wk"]) == 3:
            # (d_context, kv_heads, head_dim): the parameters say the cache's width.
            zeros = jnp.zeros((*shape, *jnp.shape(params["wk"])[1:]), dtype)
            return {"k": zeros, "v": zeros}
        width = self.qkv_features or request.features
        if width is None:
            raise ConfigError(
                f"{where}: init_cache needs the layer's width: pass params=params, give the "
                "layer qkv_features, or init_cache(..., features=d) with its input width d"
            )
        zeros = jnp.zeros((*shape, self.kv_heads, self._head_dim(width, where)), dtype)
        return {"k": zeros, "v": zeros}

    def forward_with_state(
        self, params: Params, state: State, x: Any, ctx: Context, path: Path
    ) -> tuple[Any, State]:
        q, kv, mask, lengths = self._parts(x)
        where = f"MultiHeadAttention at {describe(path)}"
        cross = isinstance(x, (tuple, list)) and lengths is None
        segments = ctx.segment_ids
        if segments is not None:
            if cross:
                raise ConfigError(
                    f"{where}: segment_ids are for self-attention; cross-attention takes a "
                    "boolean mask in its (x, context, mask) input instead"
                )
            segments = _check_segment_ids(segments, q.shape[:2], where)
        dtype = compute_dtype(self.dtype, q, kv, *params.values())
        p = {k: v.astype(dtype) for k, v in params.items()}
        q, kv = q.astype(dtype), kv.astype(dtype)

        def project(a: Array, n: str) -> Array:
            y = jnp.einsum("btd,dhk->bthk", a, p[f"w{n}"])
            return y + p[f"b{n}"] if f"b{n}" in p else y

        qh, kh, vh = project(q, "q"), project(kv, "k"), project(kv, "v")
        if ctx.position is None:
            if state:
                raise ConfigError(
                    f"{where}: its state holds a key/value cache (from init_cache); decode with "
                    "apply(params, x, state=state, position=p)"
                )
            if self.rope:
                # Positions restart where a packed segment starts; the context counts from 0.
                positions = (
                    jnp.arange(qh.shape[1]) if segments is None else segment_positions(segments)
                )
                qh = self._rope(qh, positions)
                kh = self._rope(kh, jnp.arange(kh.shape[1]) if cross else positions)
            y = attention(
                qh, kh, vh, mask=mask, causal=self.causal, fused=self.fused, q_lengths=lengths,
                kv_lengths=lengths, segment_ids=segments, window=self.window,
            )  # fmt: skip
        else:
            for name, given in (("segment_ids", segments), ("(x, lengths) input", lengths)):
                if given is not None:
                    raise ConfigError(
                        f"{where}: decoding with a key/value cache (position=) takes no {name}; "
                        "decode each sequence unpadded and unpacked"
                    )
            y, state = self._decode(qh, kh, vh, x, state, ctx.position, path)
        y = jnp.einsum("bthk,hko->bto", y, p["wo"])
        y = y + p["bo"] if "bo" in p else y
        if lengths is None:
            return y, state
        # Padded positions give 0, as a recurrent layer's do (not the output bias).
        live = jnp.arange(y.shape[1]) < lengths[:, None]
        return (jnp.where(live[..., None], y, jnp.zeros((), y.dtype)), lengths), state

    def _decode(
        self, q: Array, k: Array, v: Array, x: Any, cache: State, position: Any, path: Path
    ) -> tuple[Array, State]:
        """Write this step's keys and values at ``position`` and attend causally to the cache
        (within the window, if the layer has one)."""
        where = f"MultiHeadAttention at {describe(path)}"
        if isinstance(x, (tuple, list)):
            raise ConfigError(f"{where}: cached decoding is for self-attention; got a tuple input")
        if not (isinstance(cache, dict) and set(cache) == {"k", "v"}):
            got = sorted(cache) if isinstance(cache, dict) else type(cache).__name__
            raise ConfigError(
                f"{where}: position= decodes with a key/value cache, so its state must be "
                f"{{'k', 'v'}} (from model.init_cache(batch, max_length, params=params)); got {got}"
            )
        want = (q.shape[0], cache["k"].shape[1], *k.shape[2:])
        if cache["k"].shape != want or cache["v"].shape != want:
            raise ShapeError(
                f"{where}: cache of shape {tuple(cache['k'].shape)} does not fit this step "
                f"(expected (batch, max_length, kv_heads, head_dim) = {want})"
            )
        check_fits(want[1], position, q.shape[1], where)
        positions = position + jnp.arange(q.shape[1])
        if self.rope:
            q, k = self._rope(q, positions), self._rope(k, positions)
        # Under jit a traced position is not checked: XLA clamps the write to end at max_length.
        new = {
            n: jax.lax.dynamic_update_slice_in_dim(cache[n], a.astype(cache[n].dtype), position, 1)
            for n, a in (("k", k), ("v", v))
        }
        slots = jnp.arange(want[1])
        allowed = slots <= positions[:, None]
        if self.window is not None:
            allowed &= slots >= positions[:, None] - self.window[0]
        keys, values = new["k"].astype(q.dtype), new["v"].astype(q.dtype)
        return attention(q, keys, values, mask=allowed, fused=self.fused), new


def _is_lengths(a: Any) -> bool:
    """Whether the second of a pair input is integer lengths (not a float context)."""
    return hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.integer)


def check_fits(max_length: int, position: Any, tokens: int, where: str) -> None:
    """Raise a ShapeError unless ``tokens`` tokens written at ``position`` fit ``max_length`` slots.

    A traced ``position`` (under `jax.jit`) is checked only against the length alone.

    Example:
      >>> check_fits(8, 4, 4, "MultiHeadAttention")  # fits: returns None
    """
    if tokens > max_length:
        raise ShapeError(
            f"{where}: {tokens} tokens do not fit a key/value cache of length {max_length} "
            f"(at position {position}); make the cache with init_cache(batch, max_length) large "
            "enough"
        )
    if isinstance(position, jax.core.Tracer):
        return
    try:
        p = int(position)
    except TypeError:
        return
    if p < 0 or p + tokens > max_length:
        raise ShapeError(
            f"{where}: writing {tokens} token(s) at position {p} overflows the key/value cache "
            f"of length {max_length} (positions {p}..{p + tokens - 1}; the cache holds "
            f"0..{max_length - 1}); make the cache with init_cache(batch, max_length) large enough"
        )
