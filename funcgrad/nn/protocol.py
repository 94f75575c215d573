"""The Layer protocol: ``init(key, x) -> params`` and ``apply(params, x) -> y`` over plain dict pytrees.

`Layer.apply` alone states the calling convention; subclasses implement ``_init`` and ``_apply``.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax

from funcgrad.errors import InputTypeError, ParamsError
from funcgrad.nn.checks import as_spec, check_key, check_live
from funcgrad.nn.compiled_init import compiled_init
from funcgrad.nn.recording import current_recorder
from funcgrad.nn.types import Array, Params, Path, Spec, State


@dataclasses.dataclass(frozen=True)
class Context:
    """What one ``apply`` call carries down the tree: randomness, mode, shared parameters, the
    decoding position (None unless ``apply`` got a cache) and the packed-sequence segment ids."""

    key: Array | None
    train: bool
    shared: Mapping[str, Any]
    position: Any = None
    segment_ids: Any = None


@dataclasses.dataclass(frozen=True)
class SlotRequest:
    """What `Layer.init_cache` and `Layer.init_carry` ask of every layer in a model: its slot
    of the state, ``"cache"`` (attention keys and values) or ``"carry"`` (recurrent layers)."""

    what: str
    batch: int
    max_length: int | None
    features: int | None
    dtype: Any
    shared: Mapping[str, Any]


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
        params, state, shared = compiled_init(self, spec, key)
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
        position: Any = None,
        segment_ids: Any = None,
        **deprecated: Any,
    ) -> Any:
        """Run the layer. Pure: the same arguments always give the same result.

        The one calling convention of every layer and model: ``apply(params, x) -> y``, and
        ``apply(params, x, state=s) -> (y, new_state)`` exactly when ``state=`` is given.
        Batch-norm statistics, attention key/value caches (`init_cache`) and recurrent
        carries (`init_carry`) all travel in the state tree.

        Args:
          params: the tree ``init`` returned.
          x: the input, batch first.
          key: a PRNG key; giving one switches on training mode (dropout).
          state: the state tree (from `init_with_state`, `init_cache`, `init_carry`, or a
            previous call); when given, ``apply`` returns ``(y, new_state)``, the new state
            shaped like the given one.
          train: training mode; defaults to ``key is not None``. Batch norm in
            training mode uses batch statistics and updates ``state``.
          position: decoding: ``x`` holds the tokens at positions ``position,
            position + 1, ...`` (an int or a scalar array); needs the caches of
            `init_cache` in ``state``.
          segment_ids: packed sequences: integer ``(batch, length)`` ids, one per token of
            ``x``; a token attends only to tokens of its own segment, and positions (RoPE,
            position embeddings) restart at 0 where a segment starts.

        Returns:
          ``y``, or ``(y, new_state)`` when ``state`` was given.

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from funcgrad import nn
          >>> x = jnp.ones((2, 3))
          >>> mlp = nn.serial(nn.Dense(4), nn.relu)
          >>> mlp.apply(mlp.init(jax.random.key(0), x), x).shape
          (2, 4)
          >>> model = nn.serial(nn.Dense(4), nn.BatchNorm())
          >>> params, state = model.init_with_state(jax.random.key(0), x)
          >>> y, state = model.apply(params, x, state=state, train=True)
          >>> sorted(state)
          ['batch_norm_1']
        """
        where = f"{type(self).__name__}.apply"
        if key is not None:
            check_key(key, where)
        check_live(params, where)
        wants_state = state is not None
        cache = deprecated.pop("cache", None)
        x, state, finish = self._legacy_keywords(x, state, deprecated, where)
        if cache is not None:
            warnings.warn(
                f"{where}(..., cache=c, position=p) is deprecated: the cache is part of the "
                "state; use `y, state = model.apply(params, x, state=cache, position=p)` with "
                "`cache = model.init_cache(batch, max_length, params=params)`",
                DeprecationWarning,
                stacklevel=2,
            )
            if position is None:
                raise InputTypeError(f"{where}: give cache= and position= together, or neither")
            state = _merge({} if state is None else state, cache, where)
        elif position is not None and state is None:
            raise InputTypeError(
                f"{where}: position= decodes with key/value caches, which live in the state: "
                "pass state=model.init_cache(batch, max_length, params=params)"
            )
        names = shared_names(self)
        if names and isinstance(params, Mapping):
            missing = [n for n in names if n not in params]
            if missing:
                raise ParamsError(
                    f"params lack the shared layer(s) {missing}, stored at the top of the tree"
                )
            params, shared = _take_shared(names, params)
        else:
            shared = {}
        mode = key is not None if train is None else train
        ctx = Context(
            key=key, train=mode, shared=shared, position=position, segment_ids=segment_ids
        )
        y, new_state = apply_child(self, params, {} if state is None else state, x, ctx, ())
        y = finish(y)
        if cache is not None:
            new_cache, rest = _split(new_state, cache)
            return (y, new_cache) if not wants_state else (y, rest, new_cache)
        return (y, new_state) if wants_state else y

    def init_cache(
        self,
        batch: int,
        max_length: int,
        *,
        params: Params | None = None,
        features: int | None = None,
        dtype: Any = None,
        state: State | None = None,
    ) -> State:
        """A state holding empty key/value caches for every attention layer inside, for decoding.

        Decoding is then ``y, state = model.apply(params, tokens, state=state, position=p)``:
        the tokens at positions ``p, p + 1, ...`` are written into the caches and attend to
        everything before them. ``p + tokens.shape[1]`` must not exceed ``max_length``; with
        a concrete ``p`` that is checked (`ShapeError`), under `jax.jit` with a traced ``p``
        it cannot be, and XLA clamps the write so that it ends at ``max_length``, overwriting
        the last entries.

        Args:
          batch: sequences decoded together.
          max_length: positions the cache holds (prompt plus generated tokens).
          params: the model's parameters; the caches' widths are read from them.
          features: without ``params``, the input width of attention layers that have no
            ``qkv_features``.
          dtype: the cache's dtype; default each layer's ``dtype`` or ``param_dtype`` (the
            compute dtype inside `mixed_precision`).
          state: a model state to add the caches to (batch-norm statistics from
            `init_with_state`, say); caches already in it are replaced by empty ones.

        Returns:
          A state tree keyed like the parameters, ``{"k", "v"}`` zeros at each attention
          layer (``{}`` for a model without attention), merged into ``state`` if given.

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from funcgrad import nn
          >>> model = nn.serial(nn.Dense(8), nn.MultiHeadAttention(2, causal=True))
          >>> x = jnp.ones((1, 1, 3))
          >>> params = model.init(jax.random.key(0), x)
          >>> state = model.init_cache(1, 16, params=params)
          >>> jax.tree.map(jnp.shape, state)
          {'attention_1': {'k': (1, 16, 2, 4), 'v': (1, 16, 2, 4)}}
          >>> y, state = model.apply(params, x, state=state, position=0)
          >>> y.shape
          (1, 1, 8)
        """
        where = f"{type(self).__name__}.init_cache"
        for name, n in (("batch", batch), ("max_length", max_length)):
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise InputTypeError(f"{where}: {name} must be a positive int; got {n!r}")
        return self._init_slots(
            SlotRequest("cache", batch, max_length, features, dtype, {}), params, state, where
        )

    def init_carry(self, batch: int, *, dtype: Any = None, state: State | None = None) -> State:
        """A state holding the zero carry of every recurrent layer inside.

        ``y, state = model.apply(params, x, state=state)`` starts each recurrent layer from
        the carry in its slot and returns its final carry there (``state[...]["carry"]``),
        so a long sequence can be fed in pieces. Without a carry in the state, a recurrent
        layer starts from zeros and the state gets no carry.

        Args:
          batch: sequences run together.
          dtype: the carry's dtype; default each cell's ``dtype`` or ``param_dtype``.
          state: a model state to add the carries to; carries already in it are replaced.

        Returns:
          A state tree keyed like the parameters, ``{"carry": c}`` at each recurrent layer
          (``c`` is the cell's carry, a pair of carries for `bidirectional`).

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from funcgrad import nn
          >>> lstm = nn.recurrent(nn.LSTMCell(4))
          >>> x = jnp.ones((2, 5, 3))
          >>> params = lstm.init(jax.random.key(0), x)
          >>> y, state = lstm.apply(params, x, state=lstm.init_carry(2))
          >>> h, c = state["carry"]
          >>> y.shape, h.shape
          ((2, 5, 4), (2, 4))
        """
        where = f"{type(self).__name__}.init_carry"
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise InputTypeError(f"{where}: batch must be a positive int; got {batch!r}")
        return self._init_slots(
            SlotRequest("carry", batch, None, None, dtype, {}), None, state, where
        )

    def _init_slots(
        self, request: SlotRequest, params: Params | None, state: State | None, where: str
    ) -> State:
        if params is not None:
            names = shared_names(self)
            if not isinstance(params, Mapping):
                raise ParamsError(f"{where}: params must be the dict init returned")
            params, shared = _take_shared(names, params)
            request = dataclasses.replace(request, shared=shared)
        slots = self._init_slot(request, params, ())
        return slots if state is None else _merge(state, slots, where)

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

    def _init_slot(self, request: SlotRequest, params: Params | None, path: Path) -> State:
        """This layer's part of `init_cache` or `init_carry` (``params``: its own, or None);
        combinators place their children's, and layers without such a slot have none."""
        return {}

    def _legacy_keywords(
        self, x: Any, state: State | None, keywords: dict[str, Any], where: str
    ) -> tuple[Any, State | None, Callable[[Any], Any]]:
        """Deprecated keywords of ``apply`` as ``(input, state, how to finish the output)``."""
        if keywords:
            raise InputTypeError(f"{where}: unexpected keyword argument(s) {sorted(keywords)}")
        return x, state, _same

    def _output_spec(self, params: Params, state: State, x: Spec, path: Path) -> Any:
        ctx = Context(key=None, train=False, shared={})
        return jax.eval_shape(lambda p, s, v: self._apply(p, s, v, ctx, path)[0], params, state, x)


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

    def _init_slot(self, request: SlotRequest, params: Params | None, path: Path) -> State:
        return self.layer._init_slot(request, params, path)


def _same(y: Any) -> Any:
    return y


def _take_shared(names: list[str], params: Mapping[str, Any]) -> tuple[Params, dict[str, Any]]:
    """``params`` without the `shared` layers' subtrees at its top, and those subtrees."""
    rest = {k: v for k, v in params.items() if k not in names}
    return rest, {n: params[n] for n in names if n in params}


def _merge(state: Any, slots: Any, where: str) -> Any:
    """One tree with the state's and the slots' entries; a slot already in the state is replaced."""
    if not isinstance(state, Mapping):
        raise ParamsError(
            f"{where}: the state must be a dict tree (from init_with_state, init_cache or "
            f"init_carry); got {type(state).__name__}"
        )
    out = dict(state)
    for k, c in slots.items():
        both = k in state and isinstance(state[k], Mapping) and isinstance(c, Mapping)
        out[k] = _merge(state[k], c, where) if both else c
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
