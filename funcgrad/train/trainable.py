"""Which parameters a step trains: `split_trainable` parts a tree into trainable and frozen
leaves and `merge_trainable` joins them; every ``trainable=`` of funcgrad.train goes through both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from funcgrad.errors import ConfigError, InputTypeError, ParamsError
from funcgrad.paths import dotted, leaves_with_paths

Trainable = Callable[[str], bool] | Any  # a predicate on the dotted path, or a pytree of bools


def check(trainable: Trainable, what: str) -> None:
    """Refuse, when a step is made, a ``trainable=`` that is neither a predicate nor bools."""
    if trainable is None or callable(trainable):
        return
    for path, leaf in leaves_with_paths(trainable):
        if not isinstance(leaf, (bool, np.bool_)):
            raise InputTypeError(
                f"{what}: trainable= takes a predicate on a leaf's dotted path (lambda path: "
                f"path.startswith('head')) or a pytree of bools shaped like the parameters; "
                f"got a {type(leaf).__name__} at '{path or '(top)'}'"
            )


def mask(params: Any, trainable: Trainable, what: str = "trainable") -> list[bool]:
    """One bool per leaf of ``params`` (JAX's order): whether ``trainable`` selects it.

    A predicate is called with each leaf's dotted path; a pytree of bools is matched to
    ``params`` by path, a bool above a subtree covering all of its leaves (as optax's masks
    allow a prefix). Raises `ParamsError` naming the first path the two trees disagree on,
    and `ConfigError` when nothing is selected.

    Example:
      >>> params = {"body": {"w": 1.0}, "head": {"w": 2.0, "b": 3.0}}
      >>> mask(params, lambda path: path.startswith("head"))
      [False, True, True]
      >>> mask(params, {"body": False, "head": {"w": True, "b": False}})
      [False, False, True]
    """
    check(trainable, what)
    paths = [path for path, _ in leaves_with_paths(params)]
    if callable(trainable):
        chosen = [bool(trainable(path)) for path in paths]
    else:
        flags = dict(leaves_with_paths(trainable))
        chosen = []
        for path, keys in zip(paths, _key_paths(params), strict=True):
            covering = [dotted(keys[:i]) for i in range(len(keys), -1, -1)]
            found = next((p for p in covering if p in flags), None)
            if found is None:
                raise ParamsError(
                    f"{what}: the trainable= tree has no entry for the parameter '{path}'; "
                    "give a bool for every leaf (or for a subtree holding it)"
                )
            chosen.append(bool(flags[found]))
        known = {dotted(keys[:i]) for keys in _key_paths(params) for i in range(len(keys) + 1)}
        extra = next((p for p in flags if p not in known), None)
        if extra is not None:
            raise ParamsError(
                f"{what}: the trainable= tree names '{extra or '(top)'}', which is not a "
                f"parameter path; the parameters' paths are {paths[:8]}"
                + (" ..." if len(paths) > 8 else "")
            )
    if not any(chosen):
        raise ConfigError(
            f"{what}: trainable= selects none of the {len(paths)} parameters (e.g. "
            f"{paths[:4]}); nothing would be trained"
        )
    return chosen


def _key_paths(tree: Any) -> list[tuple[Any, ...]]:
    return [keys for keys, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def split_trainable(params: Any, trainable: Trainable, what: str = "trainable") -> tuple[Any, Any]:
    """``(train, frozen)``: ``params`` with the frozen leaves, then the trainable ones, set to None.

    Both keep ``params``' structure, so an optimizer sees ``train`` as a parameter tree
    whose frozen places are empty subtrees (``optimizer.init(train)`` holds state for the
    trainable leaves only). ``trainable=None`` trains everything: ``(params, None)``.

    Example:
      >>> train, frozen = split_trainable({"a": 1.0, "b": 2.0}, lambda path: path == "b")
      >>> train, frozen
      ({'a': None, 'b': 2.0}, {'a': 1.0, 'b': None})
      >>> merge_trainable(train, frozen)
      {'a': 1.0, 'b': 2.0}
    """
    if trainable is None:
        return params, None
    leaves, treedef = jax.tree.flatten(params)
    chosen = mask(params, trainable, what)
    train = [x if c else None for x, c in zip(leaves, chosen, strict=True)]
    frozen = [None if c else x for x, c in zip(leaves, chosen, strict=True)]
    return jax.tree.unflatten(treedef, train), jax.tree.unflatten(treedef, frozen)


def merge_trainable(train: Any, frozen: Any) -> Any:
    """The parameter tree `split_trainable` parted: each place from ``train``, or from ``frozen`` where empty."""
    if frozen is None:
        return train
    return jax.tree.map(
        lambda t, f: f if t is None else t, train, frozen, is_leaf=lambda x: x is None
    )
