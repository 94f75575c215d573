"""LoRA: low-rank factors for a model's weight matrices, and the merge ``W + (alpha/rank)·A·B``.

Fine-tune by training the small factor tree with the base parameters held fixed (closed over).
"""

from __future__ import annotations

import fnmatch
import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from funcgrad.errors import ConfigError, DTypeError, InputTypeError, ParamsError, ShapeError
from funcgrad.nn.checks import check_key
from funcgrad.nn.combinators import Parallel, Serial
from funcgrad.nn.layer import Layer, Path
from funcgrad.nn.repeat import Repeat
from funcgrad.nn.sharing import Shared
from funcgrad.paths import describe, dotted, flatten, leaves_with_paths, unflatten

Targets = Callable[[str, Any], bool] | str | Sequence[str]

# Attention's 3-d projections (`MultiHeadAttention`): wq/wk/wv map one input axis to
# (heads, head_dim); wo maps two, (heads, head_dim), to one.
_ATTENTION_INPUT_AXES = {"wq": 1, "wk": 1, "wv": 1, "wo": 2}
_DEFAULT = "the default targets (every 2-d 'w' and attention's 3-d wq/wk/wv/wo)"


def _is_float(leaf: Any) -> bool:
    return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)


def _walk(
    layer: Layer, path: Path, stack: tuple[int, ...]
) -> Iterator[tuple[str, tuple[int, ...]]]:
    """``(dotted prefix, copies stacked there)`` wherever the stacking changes below ``layer``.

    The parameters of a layer at ``path`` live at ``path`` (wrappers, `repeat` and other
    one-child layers keep their child's tree), under ``(*path, key)`` for `serial`/`parallel`
    children, and at the top under its name for `shared`, which `repeat` does not stack.
    """
    if isinstance(layer, Repeat):
        stack = (*stack, layer.n)
        yield dotted(path), stack
    elif isinstance(layer, Shared):
        path, stack = (layer.name,), ()
        yield dotted(path), stack
    children = layer.children()
    if isinstance(layer, (Serial, Parallel)):
        for key, child in zip(layer.keys, children, strict=True):
            yield from _walk(child, (*path, key), stack)
    elif len(children) == 1:
        yield from _walk(children[0], path, stack)
    elif any(_has_repeat(c) for c in children):
        raise ConfigError(
            f"lora_init: model= has {type(layer).__name__} at {describe(path)}, with several "
            "children and an nn.repeat among them; lora_init knows where serial and parallel "
            "keep their children's parameters, not where this layer does"
        )


def _has_repeat(layer: Layer) -> bool:
    return isinstance(layer, Repeat) or any(_has_repeat(c) for c in layer.children())


def _stacks(model: Layer, leaves: list[tuple[str, Any]]) -> dict[str, tuple[int, ...]]:
    """Each leaf's stacked copies (``()`` outside every `repeat`), checked against its shape."""
    if not isinstance(model, Layer):
        raise InputTypeError(
            f"lora_init: model must be the funcgrad Layer params belong to; got {type(model).__name__}"
        )
    prefixes = dict(_walk(model, (), ()))  # an inner repeat at the same path wins

    def stack(path: str) -> tuple[int, ...]:
        found = [p for p in prefixes if not p or path == p or path.startswith(p + ".")]
        return prefixes[max(found, key=len)] if found else ()

    out = {}
    for path, leaf in leaves:
        out[path] = stack(path)
        lead = tuple(getattr(leaf, "shape", ()))[: len(out[path])]
        if lead != out[path]:
            raise ParamsError(
                f"lora_init: nn.repeat stacks {out[path]} copies at '{path}', but that leaf is "
                f"{tuple(getattr(leaf, 'shape', ()))}; params do not belong to this model"
            )
    return out


def _stack_axes(path: str, leaf: Any, stacks: dict[str, tuple[int, ...]] | None) -> int:
    """How many leading axes of a leaf stack `repeat` copies: from the model, or else from
    the name (attention's projections are 3-d per copy); a ``w`` of 3 or more axes is ambiguous."""
    if stacks is not None:
        return len(stacks[path])
    name, ndim = path.rsplit(".", 1)[-1], getattr(leaf, "ndim", 0)
    if name in _ATTENTION_INPUT_AXES and ndim > 3:
        return ndim - 3
    if name == "w" and ndim > 2:
        raise ShapeError(
            f"lora_init: '{path}' of shape {tuple(leaf.shape)} may be a Dense weight stacked by "
            "nn.repeat (leading layer axes) or a convolution kernel; pass model= (the layer "
            "params belong to) so that lora_init can tell, or leave it out with targets="
        )
    return 0


def _default_target(path: str, leaf: Any, axes: int) -> bool:
    name, ndim = path.rsplit(".", 1)[-1], getattr(leaf, "ndim", 0) - axes
    wanted = (name == "w" and ndim == 2) or (name in _ATTENTION_INPUT_AXES and ndim == 3)
    return wanted and _is_float(leaf)


def _predicate(targets: Targets | None) -> tuple[Callable[[str, Any], bool] | None, str]:
    """The targets as a predicate on ``(dotted path, leaf)`` (None: the default), and how an
    error names them."""
    if targets is None:
        return None, _DEFAULT
    if isinstance(targets, str):
        targets = (targets,)
    if callable(targets):
        return targets, f"the targets predicate {getattr(targets, '__name__', targets)!r}"
    if isinstance(targets, Sequence) and all(isinstance(t, str) for t in targets):
        patterns = tuple(targets)
        return (
            lambda path, _: any(fnmatch.fnmatchcase(path, p) for p in patterns),
            f"targets {list(patterns)}",
        )
    raise InputTypeError(
        "lora_init: targets must be a predicate f(path, leaf) -> bool, a glob pattern on "
        f"dotted paths ('*.wq') or a sequence of them; got {type(targets).__name__}"
    )


def _input_axes(path: str, leaf: Any, axes: int) -> int:
    """How many axes of a targeted weight, after its ``axes`` stacked ones, are its input (the
    rest are its output)."""
    shape = tuple(getattr(leaf, "shape", ()))
    if not _is_float(leaf):
        raise DTypeError(
            f"lora_init: targets select '{path}' of dtype {getattr(leaf, 'dtype', type(leaf))}; "
            "LoRA adapts floating weight matrices"
        )
    name, ndim = path.rsplit(".", 1)[-1], len(shape) - axes
    if ndim == 2:
        return 1
    if ndim == 3 and name in _ATTENTION_INPUT_AXES:
        return _ATTENTION_INPUT_AXES[name]
    stacked = f" after {axes} axes stacked by nn.repeat" if axes else ""
    raise ShapeError(
        f"lora_init: targets select '{path}' of shape {shape}, which is not a weight matrix"
        f"{stacked}: LoRA adapts a 2-d (in, out) weight, or attention's 3-d wq/wk/wv "
        "(d, heads, head_dim) or wo (heads, head_dim, out)"
    )


def lora_init(
    key: jax.Array,
    params: Any,
    *,
    rank: int,
    targets: Targets | None = None,
    model: Layer | None = None,
) -> dict[str, Any]:
    """Low-rank factors ``{"a": A, "b": B}`` for the targeted weights of ``params``.

    A weight is a matrix from its input axes to its output axes: a 2-d ``w`` is ``(in,
    out)``; attention's ``wq``/``wk``/``wv`` ``(d, heads, head_dim)`` have one input axis and
    ``wo`` ``(heads, head_dim, out)`` two. ``A`` is ``(*input_dims, rank)``, drawn as
    peft draws it (uniform in ``±1/sqrt(fan_in)``, Kaiming-uniform with ``a=sqrt(5)``);
    ``B`` is ``(rank, *output_dims)``, zeros, so ``lora_merge(params, lora)`` equals
    ``params`` until ``B`` is trained. Both take the weight's dtype. The result mirrors
    ``params`` at the targeted leaves only, and holds nothing but the factors (everything in
    it is trainable); the scale ``alpha / rank`` is `lora_merge`'s argument.

    Weights stacked by `repeat` (a leading axis of ``n`` copies, one per nested repeat) get
    one pair of factors per copy, stacked the same way: ``A`` ``(n, *input_dims, rank)``,
    ``B`` ``(n, rank, *output_dims)``, each copy's ``A`` drawn on its own. ``model`` says
    which leaves are stacked; without it, attention's ``wq``/``wk``/``wv``/``wo`` of more than
    3 axes are taken as stacked, and a ``w`` of more than 2 axes (a stacked `Dense`, or a
    convolution kernel?) is a `ShapeError` asking for ``model``.

    Args:
      key: a PRNG key.
      params: the base parameters (a nested dict of arrays).
      rank: the factors' inner size, at least 1.
      targets: which leaves to adapt: a predicate ``f(dotted_path, leaf) -> bool``, or a
        glob pattern on dotted paths (``"*.wq"``) or a sequence of them. The default takes
        every floating ``w`` that is 2-d per copy (`Dense`) and attention's
        ``wq``/``wk``/``wv``/``wo``.
      model: the layer ``params`` belong to, to find the weights `repeat` stacks.

    Raises:
      ConfigError: ``rank`` is not a positive integer, or the targets match no leaf.
      ShapeError / DTypeError: a targeted leaf is not a floating weight matrix, or (without
        ``model``) may be stacked or not.
      ParamsError: a leaf is not stacked as ``model`` says.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> model = nn.serial(nn.Dense(8), nn.relu, nn.Dense(2))
      >>> params = model.init(jax.random.key(0), jnp.zeros((1, 4)))
      >>> lora = nn.lora_init(jax.random.key(1), params, rank=2)
      >>> jax.tree.map(jnp.shape, lora)["dense_0"]
      {'w': {'a': (4, 2), 'b': (2, 8)}}
      >>> deep = nn.repeat(nn.serial(nn.Dense(4), nn.relu), 3)
      >>> params = deep.init(jax.random.key(0), jnp.zeros((1, 4)))
      >>> jax.tree.map(jnp.shape, nn.lora_init(jax.random.key(1), params, rank=2, model=deep))
      {'dense_0': {'w': {'a': (3, 4, 2), 'b': (3, 2, 4)}}}
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"lora_init: rank must be a positive integer; got {rank!r}")
    check_key(key, "lora_init")
    wanted, spelled = _predicate(targets)
    leaves = leaves_with_paths(params)
    stacks = None if model is None else _stacks(model, leaves)
    if wanted is None:
        chosen = [
            (path, leaf, axes)
            for path, leaf in leaves
            if _default_target(path, leaf, axes := _stack_axes(path, leaf, stacks))
        ]
    else:
        chosen = [
            (path, leaf, _stack_axes(path, leaf, stacks))
            for path, leaf in leaves
            if wanted(path, leaf)
        ]
    if not chosen:
        # Name the weight matrices first: they are what a pattern was meant to find.
        names = ("w", *_ATTENTION_INPUT_AXES)
        paths = [p for p, _ in leaves if p.rsplit(".", 1)[-1] in names]
        paths += [p for p, _ in leaves if p.rsplit(".", 1)[-1] not in names]
        some = ", ".join(paths[:8]) + (", ..." if len(paths) > 8 else "")
        raise ConfigError(
            f"lora_init: no leaf of params matches {spelled}; its paths include: {some or 'none'}"
        )
    flat: dict[str, Any] = {}
    for k, (path, w, axes) in zip(jax.random.split(key, len(chosen)), chosen, strict=True):
        n_in = axes + _input_axes(path, w, axes)
        bound = 1 / math.prod(w.shape[axes:n_in]) ** 0.5
        a_shape = (*w.shape[:n_in], rank)
        flat[f"{path}.a"] = jax.random.uniform(k, a_shape, w.dtype, -bound, bound)
        flat[f"{path}.b"] = jnp.zeros((*w.shape[:axes], rank, *w.shape[n_in:]), w.dtype)
    return unflatten(flat, where="lora_init")


def _factor_pairs(lora: Any) -> dict[str, tuple[Any, Any]]:
    """``{weight path: (A, B)}`` of a factor tree, checking it holds exactly ``a`` and ``b``."""
    if not isinstance(lora, Mapping):
        raise ParamsError(
            f"lora_merge: lora must be the nested dict lora_init returns; got {type(lora).__name__}"
        )
    groups: dict[str, dict[str, Any]] = {}
    for key, value in flatten(lora, where="lora_merge").items():
        path, _, name = key.rpartition(".")
        groups.setdefault(path, {})[name] = value
    pairs = {}
    for path, group in groups.items():
        if not path or sorted(group) != ["a", "b"]:
            raise ParamsError(
                f"lora_merge: lora at '{path or '(top)'}' holds {sorted(group)}; each adapted "
                "weight's entry must be exactly {'a': A, 'b': B}"
            )
        pairs[path] = (group["a"], group["b"])
    return pairs


def lora_merge(params: Any, lora: Any, *, alpha: float | None = None) -> Any:
    """``params`` with each adapted weight ``W`` replaced by ``W + (alpha / rank)·A·B``.

    ``A·B`` is ``tensordot(A, B, 1)``, shaped like ``W``; ``rank`` is ``A``'s last axis.
    Leading axes that ``A``, ``B`` and ``W`` share (``A.ndim + B.ndim - 2 - W.ndim`` of them:
    copies stacked by `repeat`, as `lora_init` makes them with ``model=``) are batch axes,
    each copy merged with its own factors. The
    default ``alpha`` is the rank, a scale of 1 (peft's default ``LoraConfig`` has ``r=8,
    lora_alpha=8``, also 1); to match a peft adapter pass its ``lora_alpha``. The sum is
    taken in at least float32 and cast back to ``W``'s dtype; ``params`` is not changed. It
    traces under ``jit`` and ``grad``: call it inside the loss to train ``lora`` with
    ``params`` fixed (see docs/lora.md).

    Raises:
      ParamsError: ``lora`` is not a factor tree, or names a leaf ``params`` lacks.
      ShapeError: a factor pair does not fit its weight.
      ConfigError: ``alpha`` is not a positive number.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> params = {"dense": {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}}
      >>> lora = {"dense": {"w": {"a": jnp.ones((3, 1)), "b": jnp.full((1, 2), 0.5)}}}
      >>> nn.lora_merge(params, lora, alpha=2.0)["dense"]["w"]
      Array([[1., 1.],
             [1., 1.],
             [1., 1.]], dtype=float32)
    """
    if alpha is not None and (
        isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not alpha > 0
    ):
        raise ConfigError(f"lora_merge: alpha must be a positive number; got {alpha!r}")
    pairs = _factor_pairs(lora)
    weights = dict(leaves_with_paths(params))
    merged = {}
    for path, (a, b) in pairs.items():
        if path not in weights:
            near = [p for p in weights if p.rsplit(".", 1)[-1] == path.rsplit(".", 1)[-1]]
            raise ParamsError(
                f"lora_merge: lora adapts '{path}', which params lacks"
                + (f"; params has {', '.join(near[:6])}" if near else "")
            )
        w = weights[path]
        # Leading axes shared by A, B and W are repeat-stacked copies, merged copy by copy.
        lead = a.ndim + b.ndim - 2 - w.ndim
        fits = (
            lead >= 0
            and a.ndim >= lead + 2
            and b.ndim >= lead + 2
            and a.shape[:lead] == b.shape[:lead] == w.shape[:lead]
            and a.shape[-1] == b.shape[lead]
            and tuple(w.shape[lead:]) == (*a.shape[lead:-1], *b.shape[lead + 1 :])
        )
        if not fits:
            raise ShapeError(
                f"lora_merge: at '{path}' the weight is {tuple(w.shape)} but A is "
                f"{tuple(a.shape)} and B {tuple(b.shape)} (expected A (*stack, *in, rank) and "
                "B (*stack, rank, *out) with (*stack, *in, *out) the weight's shape)"
            )
        ct = jnp.promote_types(w.dtype, jnp.float32)
        rank, stack = a.shape[-1], a.shape[:lead]
        delta = jnp.matmul(
            a.astype(ct).reshape(*stack, -1, rank),
            b.astype(ct).reshape(*stack, rank, -1),
            precision=jax.lax.Precision.HIGHEST,
        ).reshape(w.shape)
        scale = 1.0 if alpha is None else alpha / rank
        merged[path] = (w.astype(ct) + scale * delta).astype(w.dtype)
    return jax.tree_util.tree_map_with_path(lambda p, leaf: merged.get(dotted(p), leaf), params)
