"""The Layer value: ``init(key, x) -> params`` and ``apply(params, x) -> y`` over plain dict pytrees.

Every layer and combinator derives from `Layer`; `ParamLayer` builds leaf layers from a table of parameter specs.
"""

from __future__ import annotations

import contextvars
import dataclasses
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from funcgrad.errors import DTypeError, InputTypeError, ParamsError, ShapeError
from funcgrad.nn.recording import Recorder as Recorder
from funcgrad.nn.recording import current_recorder
from funcgrad.nn.recording import recording as recording

Array = jax.Array
Params = dict[str, Any]
State = dict[str, Any]
Cache = dict[str, Any]
Path = tuple[str, ...]
Spec = jax.ShapeDtypeStruct
Initializer = Callable[..., Array]


def path_str(path: Path) -> str:
    """``('block_0', 'dense_1')`` as ``params['block_0']['dense_1']``, as `jax.tree_util.keystr` writes it."""
    return "params" + "".join(f"[{k!r}]" for k in path)


def path_key(key: Array, path: Path) -> Array:
    """Fold a stable hash of ``path`` into ``key`` (crc32, not Python's salted ``hash``)."""
    return jax.random.fold_in(key, zlib.crc32("/".join(path).encode()) & 0x7FFFFFFF)


@dataclasses.dataclass(frozen=True)
class Context:
    """What one ``apply`` call carries down the tree: randomness, mode, shared parameters, and
    the decoding position (None unless ``apply`` got a cache)."""

    key: Array | None
    train: bool
    shared: Mapping[str, Any]
    position: Any = None


def as_spec(x: Any, where: str) -> Any:
    """An example input (array or `jax.ShapeDtypeStruct`, or a tuple of them) as ShapeDtypeStructs.

    Dtypes are JAX's for the mode it runs in: a NumPy float64 input is float32 in 32-bit mode, as
    ``apply`` will see it."""
    if isinstance(x, (tuple, list)):
        return tuple(as_spec(a, where) for a in x)
    if isinstance(x, jax.ShapeDtypeStruct):
        dtype = jax.dtypes.canonicalize_dtype(x.dtype)
        return x if dtype == x.dtype else x.update(dtype=dtype)
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return jax.ShapeDtypeStruct(x.shape, jax.dtypes.canonicalize_dtype(x.dtype))
    try:
        arr = jnp.asarray(x)
    except TypeError:
        raise InputTypeError(
            f"{where}: expected an array or jax.ShapeDtypeStruct as example input; "
            f"got {type(x).__name__}"
        ) from None
    return jax.ShapeDtypeStruct(arr.shape, arr.dtype)


class Layer:
    """A layer: an immutable value with ``init`` and ``apply``, both pure.

    Subclasses implement ``_init`` and ``_apply``; users call ``init``, ``apply``
    and, for parameterless layers, the layer itself as a function.
    """

    kind: str = "layer"
    name: str | None = None

    # -- the public contract ------------------------------------------------------------------

    def init(self, key: Array, x: Any) -> Params:
        """Parameters for inputs like ``x`` (an array or `jax.ShapeDtypeStruct`); no data is computed.

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from funcgrad import nn
          >>> params = nn.Dense(3).init(jax.random.key(0), jnp.zeros((1, 2)))
          >>> jax.tree.map(jnp.shape, params)
          {'b': (3,), 'w': (2, 3)}
        """
        return self.init_with_state(key, x)[0]

    def init_with_state(self, key: Array, x: Any) -> tuple[Params, State]:
        """Parameters and the initial state (batch-norm statistics; ``{}`` for stateless models)."""
        check_key(key, f"{type(self).__name__}.init")
        spec = as_spec(x, f"{type(self).__name__}.init")
        params, state, shared = _compiled_init(self, spec, key)
        for name, sub in shared.items():
            if name in params:
                raise ParamsError(
                    f"shared layer '{name}' collides with a parameter key of the same name at the "
                    "top of the model; give the shared layer another name"
                )
            params = {**params, name: sub}
        return params, state

    def init_state(self, x: Any) -> State:
        """The initial state alone, for models with `BatchNorm`."""
        return self.init_with_state(jax.random.key(0), x)[1]

    def apply(
        self,
        params: Params,
        x: Any,
        *,
        key: Array | None = None,
        state: State | None = None,
        train: bool | None = None,
        cache: Cache | None = None,
        position: Any = None,
    ) -> Any:
        """Run the layer. Pure: the same arguments always give the same result.

        Args:
          params: the tree ``init`` returned.
          x: the input, batch first.
          key: a PRNG key; giving one switches on training mode (dropout).
          state: the state tree; when given, ``apply`` returns ``(y, new_state)``.
          train: training mode; defaults to ``key is not None``. Batch norm in
            training mode uses batch statistics and updates ``state``.
          cache: the tree `init_cache` made (attention keys and values); decodes the
            tokens ``x`` at positions ``position, position + 1, ...``.
          position: where ``x`` starts in the sequence (an int or a scalar array); only
            with ``cache``.

        Returns:
          ``y``; ``(y, new_state)`` when ``state`` was given; ``(y, new_cache)`` when
          ``cache`` was given; ``(y, new_state, new_cache)`` with both.
        """
        if key is not None:
            check_key(key, f"{type(self).__name__}.apply")
        where = f"{type(self).__name__}.apply"
        if (cache is None) != (position is None):
            raise InputTypeError(f"{where}: give cache= and position= together, or neither")
        names = shared_names(self)
        if names and isinstance(params, Mapping):
            missing = [n for n in names if n not in params]
            if missing:
                raise ParamsError(
                    f"params lack the shared layer(s) {missing}, stored at the top of the tree"
                )
            shared = {n: params[n] for n in names}
            params = {k: v for k, v in params.items() if k not in names}
        else:
            shared = {}
        mode = key is not None if train is None else train
        ctx = Context(key=key, train=mode, shared=shared, position=position)
        # A cache travels down the tree inside the state: each attention layer finds its own
        # {"k", "v"} in its state slot, so every combinator that threads state threads caches.
        both = {} if state is None else state
        if cache is not None:
            both = _merge(both, cache, where)
        y, new_both = apply_child(self, params, both, x, ctx, ())
        if cache is None:
            return y if state is None else (y, new_both)
        new_cache, new_state = _split(new_both, cache)
        return (y, new_cache) if state is None else (y, new_state, new_cache)

    def init_cache(
        self, batch: int, max_length: int, *, features: int | None = None, dtype: Any = None
    ) -> Cache:
        """Empty key/value caches for every attention layer inside, for ``apply(..., cache=)``.

        Args:
          batch: sequences decoded together.
          max_length: positions the cache holds (prompt plus generated tokens).
          features: the input width of attention layers that have no ``qkv_features``.
          dtype: the cache's dtype; default each layer's ``dtype`` or ``param_dtype`` (the
            compute dtype inside `mixed_precision`).

        Returns:
          A tree keyed like the parameters, ``{"k", "v"}`` zeros at each attention layer;
          ``{}`` for a model without attention.

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from funcgrad import nn
          >>> model = nn.serial(nn.Dense(8), nn.MultiHeadAttention(2, causal=True))
          >>> cache = model.init_cache(1, 16, features=8)
          >>> jax.tree.map(jnp.shape, cache)
          {'attention_1': {'k': (1, 16, 2, 4), 'v': (1, 16, 2, 4)}}
          >>> x = jnp.ones((1, 1, 3))
          >>> params = model.init(jax.random.key(0), x)
          >>> y, cache = model.apply(params, x, cache=cache, position=0)
          >>> y.shape
          (1, 1, 8)
        """
        where = f"{type(self).__name__}.init_cache"
        for name, n in (("batch", batch), ("max_length", max_length)):
            if not isinstance(n, int) or n < 1:
                raise InputTypeError(f"{where}: {name} must be a positive int; got {n!r}")
        return self._init_cache(batch, max_length, features, dtype, ())

    def __call__(self, x: Any) -> Any:
        """Apply a parameterless, stateless layer as a plain function: ``nn.relu(x)``."""
        return self.apply({}, x)

    # -- what subclasses provide --------------------------------------------------------------

    def children(self) -> tuple[Layer, ...]:
        """The layers this one contains (combinators); leaves have none."""
        return ()

    def shared_name(self) -> str | None:
        """The top-level key this layer's parameters live under if it is `nn.shared`; else None."""
        return None

    def _init(
        self, key: Array, x: Any, path: Path, shared: dict[str, Any]
    ) -> tuple[Params, State, Any]:
        """Return ``(params, state, output spec)`` for an input spec."""
        raise NotImplementedError

    def _apply(self, params: Params, state: State, x: Any, ctx: Context, path: Path) -> Any:
        """Return ``(y, new_state)``."""
        raise NotImplementedError

    def _init_cache(
        self, batch: int, max_length: int, features: int | None, dtype: Any, path: Path
    ) -> Cache:
        """This layer's part of `init_cache`; layers without attention have none."""
        return {}

    def _output_spec(self, params: Params, state: State, x: Spec, path: Path) -> Any:
        ctx = Context(key=None, train=False, shared={})
        return jax.eval_shape(lambda p, s, v: self._apply(p, s, v, ctx, path)[0], params, state, x)


# Set by `mixed_precision` while it initialises its layer: how ``apply`` will cast parameters, so
# that the output specs ``init`` computes (and the checks on them) match what ``apply`` does.
INIT_PARAM_CAST: contextvars.ContextVar[Callable[[Any], Any] | None] = contextvars.ContextVar(
    "funcgrad_init_param_cast", default=None
)


def apply_child(
    layer: Layer, params: Params, state: State, x: Any, ctx: Context, path: Path
) -> tuple[Any, State]:
    """Run ``layer`` inside its parent; every layer call goes through here, so it can be recorded."""
    recorder = current_recorder()
    if recorder is None:
        return layer._apply(params, state, x, ctx, path)
    token = recorder.enter(layer, path, params)
    y, new_state = layer._apply(params, state, x, ctx, path)
    recorder.leave(token, y)
    return y, new_state


@dataclasses.dataclass(frozen=True)
class Wrapper(Layer):
    """A layer around one other that keeps its key, name and parameter tree (`remat`,
    `mixed_precision`); subclasses change how it is applied."""

    layer: Layer

    def children(self) -> tuple[Layer, ...]:
        return (self.layer,)

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.layer.kind

    @property
    def name(self) -> str | None:  # type: ignore[override]
        return self.layer.name

    def shared_name(self) -> str | None:
        return self.layer.shared_name()

    def _init(
        self, key: Array, x: Any, path: Path, shared: dict[str, Any]
    ) -> tuple[Params, State, Any]:
        return self.layer._init(key, x, path, shared)

    def _init_cache(
        self, batch: int, max_length: int, features: int | None, dtype: Any, path: Path
    ) -> Cache:
        return self.layer._init_cache(batch, max_length, features, dtype, path)


def _merge(state: Any, cache: Any, where: str) -> Any:
    """One tree with the state's and the cache's entries (they sit at different layers)."""
    if not (isinstance(state, Mapping) and isinstance(cache, Mapping)):
        raise ParamsError(f"{where}: the cache and the state overlap; pass a cache from init_cache")
    out = dict(state)
    for k, c in cache.items():
        out[k] = _merge(state[k], c, where) if k in state else c
    return out


def _split(tree: Any, cache: Any) -> tuple[Any, Any]:
    """``tree`` cut into (the entries where ``cache`` has them, the rest), undoing `_merge`."""
    if not isinstance(cache, Mapping) or not isinstance(tree, Mapping):
        return tree, {}
    taken, rest = {}, {}
    for k, v in tree.items():
        if k in cache:
            taken[k], left = _split(v, cache[k])
            if left:
                rest[k] = left
        else:
            rest[k] = v
    return taken, rest


def shared_names(layer: Layer) -> list[str]:
    """Names of the `shared` layers anywhere inside ``layer``, whose parameters sit at the top."""
    found: list[str] = []
    stack = [layer]
    while stack:
        node = stack.pop()
        name = node.shared_name()
        if name is not None and name not in found:
            found.append(name)
        stack.extend(node.children())
    return found


def _init_tree(layer: Layer, spec: Any, key: Array) -> tuple[Params, State, dict[str, Any]]:
    shared: dict[str, Any] = {}
    params, state, _ = layer._init(key, spec, (), shared)
    return params, state, shared


# One compiled program draws every parameter of a model: run eagerly, each initializer would
# compile its own sampler for each parameter shape (seconds for a small CNN in a fresh
# process). The keys and initializers are unchanged, and so are the values, to the bit.
# XLA's optimisation level 1 compiles it 3-4× faster than the default and gives the same
# bits (level 0 does not), drawing within 15% of the default's speed.
_init_jit = jax.jit(_init_tree, static_argnums=(0, 1))
_INIT_OPTIONS = {"xla_backend_optimization_level": 1}
_INIT_CACHE: dict[Any, Any] = {}


def _compiled_init(layer: Layer, spec: Any, key: Array) -> tuple[Params, State, dict[str, Any]]:
    """``layer``'s parameters, state and shared parameters, drawn by one compiled program,
    cached per layer, input spec and key type (a layer that cannot be hashed is traced afresh)."""
    if isinstance(key, jax.core.Tracer):  # inside jit or vmap: part of the caller's program
        return _init_tree(layer, spec, key)
    cache_key: Any = (layer, spec, key.dtype, key.shape)
    try:
        compiled = _INIT_CACHE.get(cache_key)
        if compiled is None:
            compiled = _init_jit.trace(layer, spec, key).lower().compile(_INIT_OPTIONS)
            _INIT_CACHE[cache_key] = compiled
    except TypeError:  # unhashable: a layer holding a list, say
        traced = jax.jit(lambda k: _init_tree(layer, spec, k)).trace(key)
        compiled = traced.lower().compile(_INIT_OPTIONS)
    return compiled(key)


def check_key(key: Any, where: str) -> None:
    """Raise an InputTypeError naming ``where`` unless ``key`` is one PRNG key.

    Example:
      >>> import jax
      >>> check_key(jax.random.key(0), "Dropout.apply")  # fine: returns None
    """
    if not isinstance(key, jax.Array):
        raise InputTypeError(
            f"{where}: expected a PRNG key from jax.random.key; got {type(key).__name__}"
        )
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    raw = key.dtype == jnp.uint32 and key.shape == (2,)
    if not (typed or raw) or (typed and key.shape != ()):
        raise InputTypeError(
            f"{where}: expected a single PRNG key (jax.random.key(seed)); got an array of "
            f"shape {key.shape} and dtype {key.dtype}"
        )


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One parameter of a leaf layer: its shape, dtype and initialiser."""

    shape: tuple[int, ...]
    dtype: Any
    init: Initializer


class ParamLayer(Layer):
    """A leaf layer described by ``param_specs(x)`` and ``forward(params, x, ctx, path)``.

    Initialisation and the check of a given parameter tree both come from the
    one table of specs, so they cannot disagree.
    """

    def param_specs(self, x: Spec, path: Path) -> dict[str, ParamSpec]:
        return {}

    def check_input(self, x: Spec, path: Path) -> None:
        """Raise a clear error if ``x`` cannot go through this layer."""

    def forward(self, params: Params, x: Array, ctx: Context, path: Path) -> Array:
        raise NotImplementedError

    def forward_with_state(
        self, params: Params, state: State, x: Array, ctx: Context, path: Path
    ) -> tuple[Array, State]:
        """``forward`` for layers with state; stateless layers pass the state through."""
        return self.forward(params, x, ctx, path), state

    def _init(
        self, key: Array, x: Any, path: Path, shared: dict[str, Any]
    ) -> tuple[Params, State, Any]:
        self.check_input(x, path)
        specs = self.param_specs(x, path)
        base = path_key(key, path)
        params = {
            n: s.init(jax.random.fold_in(base, i), s.shape, s.dtype)
            for i, (n, s) in enumerate(sorted(specs.items()))
        }
        state = self.initial_state(x)
        cast = INIT_PARAM_CAST.get()
        seen = params if cast is None else cast(params)
        return params, state, self._output_spec(seen, state, x, path)

    def initial_state(self, x: Spec) -> State:
        """The state of a stateful layer before any step; ``{}`` for the rest."""
        return {}

    def _apply(self, params: Params, state: State, x: Any, ctx: Context, path: Path) -> Any:
        # x may be a tuple of arrays (attention's (query, context, mask)); errors report the first.
        x = jax.tree.map(jnp.asarray, x)
        self.check_input(x, path)
        first = jnp.shape(jax.tree.leaves(x)[0])
        check_params(params, self.param_specs(x, path), path, type(self).__name__, first)
        with jax.named_scope("/".join(path) or self.kind):
            return self.forward_with_state(params, state, x, ctx, path)


def check_params(
    params: Any, specs: dict[str, ParamSpec], path: Path, layer: str, x_shape: tuple[int, ...]
) -> None:
    """Check that ``params`` holds exactly the keys of ``specs``, with their shapes."""
    where = f"{layer} at {path_str(path)}"
    if not isinstance(params, Mapping):
        raise ParamsError(f"{where}: expected a dict of parameters; got {type(params).__name__}")
    expected = {n: s.shape for n, s in specs.items()}
    missing = sorted(set(expected) - set(params))
    extra = sorted(set(params) - set(expected))
    if missing or extra:
        raise ParamsError(
            f"{where}: parameter keys differ (missing {missing}, unexpected {extra}); "
            f"expected {expected or 'no parameters'}"
        )
    for n, shape in expected.items():
        got = jnp.shape(params[n])
        if got != shape:
            raise ParamsError(
                f"{where}: parameter '{n}' should have shape {shape} for an input of shape "
                f"{tuple(x_shape)}; got {got} (were the parameters made for another input size?)"
            )
        if not jnp.issubdtype(jnp.result_type(params[n]), jnp.inexact):
            raise DTypeError(
                f"{where}: parameter '{n}' must be floating point; got {jnp.result_type(params[n])}"
            )


def require_rank(x: Spec, ranks: tuple[int, ...], path: Path, layer: str, layout: str) -> None:
    """Raise a ShapeError naming the layer unless ``x.ndim`` is one of ``ranks``."""
    if x.ndim not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ShapeError(
            f"{layer} at {path_str(path)}: expected input of rank {want} {layout}; "
            f"got shape {tuple(x.shape)}"
        )


def require_float(x: Spec, path: Path, layer: str) -> None:
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        raise DTypeError(
            f"{layer} at {path_str(path)}: expected a floating-point input; got dtype {x.dtype}"
        )


def compute_dtype(dtype: Any, *arrays: Any) -> Any:
    """The dtype to compute in: ``dtype`` if given, else the promotion of the arrays."""
    return jnp.dtype(dtype) if dtype is not None else jnp.result_type(*arrays)
