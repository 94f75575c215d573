"""One spelling for a leaf's place in a tree: dotted keys, ``encoder.layer_0.w``.

Errors, checkpoint keys, safetensors keys and sharding rules all name leaves this way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax

from funcgrad.errors import ParamsError

ROOT = "(top)"  # how an error names the whole tree, whose dotted path is ""


def key_name(entry: Any) -> str:
    """One step of a path as text: a dict key, an attribute name or a sequence index.

    Example:
      >>> import jax
      >>> key_name(jax.tree_util.DictKey("w")), key_name(jax.tree_util.SequenceKey(0))
      ('w', '0')
    """
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def dotted(path: Iterable[Any]) -> str:
    """A path (JAX key entries or plain strings) as ``a.b.0``; ``""`` for the root.

    Example:
      >>> import jax
      >>> tree = {"dense_0": {"w": 1, "b": 2}}
      >>> [dotted(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
      ['dense_0.b', 'dense_0.w']
      >>> dotted(("block_0", "attention_1", "wq"))
      'block_0.attention_1.wq'
    """
    return ".".join(key_name(k) for k in path)


def describe(path: Iterable[Any]) -> str:
    """A path for an error message: its dotted form, or ``(top)`` for the root."""
    return dotted(path) or ROOT


def leaves_with_paths(tree: Any, is_leaf: Any = None) -> list[tuple[str, Any]]:
    """``(dotted path, leaf)`` for every leaf of ``tree``, in JAX's flattening order.

    Example:
      >>> leaves_with_paths({"a": {"b": 1}, "c": [2, 3]})
      [('a.b', 1), ('c.0', 2), ('c.1', 3)]
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return [(dotted(p), leaf) for p, leaf in flat]


def flatten(tree: Any, where: str = "paths.flatten") -> dict[str, Any]:
    """A nested dict of arrays as one flat dict keyed by dotted paths.

    Keys must be non-empty strings without ``.`` (the separator), so that `unflatten` gives
    the same tree back.

    Example:
      >>> import jax.numpy as jnp
      >>> tree = {"serial_0": {"dense_0": {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}}}
      >>> sorted(flatten(tree))
      ['serial_0.dense_0.b', 'serial_0.dense_0.w']
    """
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                if not isinstance(k, str) or not k or "." in k:
                    raise ParamsError(
                        f"{where}: key {k!r} under '{prefix or ROOT}' must be a non-empty "
                        "string without '.', since '.' separates the levels of a dotted path"
                    )
                walk(v, f"{prefix}.{k}" if prefix else k)
        elif hasattr(node, "shape") and hasattr(node, "dtype"):
            flat[prefix] = node
        else:
            raise ParamsError(
                f"{where}: expected nested dicts of arrays; '{prefix or ROOT}' holds a "
                f"{type(node).__name__}"
            )

    walk(tree, "")
    return flat


def unflatten(flat: Mapping[str, Any], where: str = "paths.unflatten") -> dict[str, Any]:
    """The nested dict of a flat dict with dotted keys (the inverse of `flatten`).

    Example:
      >>> unflatten({"a.b": 1, "a.c": 2, "d": 3})
      {'a': {'b': 1, 'c': 2}, 'd': 3}
    """
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ParamsError(f"{where}: '{key}' nests under a leaf, '{p}'")
        if leaf in node:
            raise ParamsError(f"{where}: '{key}' is both a leaf and a branch")
        node[leaf] = value
    return tree
