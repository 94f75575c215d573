"""What both checkpoint formats share: leaves named by their dotted path, checked against ``like``.

Typed PRNG keys are stored as their key data; every difference from ``like`` is listed at once.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from funcgrad.errors import CheckpointError, ParamsError
from funcgrad.paths import ROOT, dotted, leaves_with_paths, unflatten

# The parts of the tree `fit` saves, as a mismatch message names them.
PARTS = {"params": "parameters", "opt_state": "optimizer state", "model_state": "model state"}


def is_key(x: Any) -> bool:
    """Is ``x`` a typed PRNG key array (from ``jax.random.key``), or the shape of one?"""
    return isinstance(x, jax.Array | jax.ShapeDtypeStruct) and jnp.issubdtype(
        x.dtype, jax.dtypes.prng_key
    )


def key_impl(x: Any) -> Any:
    """A typed key's implementation; `jax.random.key_impl` takes no `jax.ShapeDtypeStruct`."""
    return x.dtype._impl if isinstance(x, jax.ShapeDtypeStruct) else jax.random.key_impl(x)


def stored(x: Any) -> jax.ShapeDtypeStruct:
    """The shape and dtype a leaf is stored with (a typed key: its key data's)."""
    data = jax.eval_shape(jax.random.key_data, x) if is_key(x) else x
    return jax.ShapeDtypeStruct(tuple(jnp.shape(data)), jnp.result_type(data))


def wanted(like: Any) -> dict[str, jax.ShapeDtypeStruct]:
    """``{dotted path: stored shape and dtype}`` for every leaf of ``like``."""
    return {name: stored(x) for name, x in leaves_with_paths(like)}


def join(prefix: str, name: str) -> str:
    """``name`` under ``prefix``, both dotted (either may be ``""``, the root)."""
    return ".".join(p for p in (prefix, name) if p)


def part(leaves: Mapping[str, Any], prefix: str) -> tuple[dict[str, Any], str]:
    """The leaves under ``prefix`` with it stripped, and the prefix; all of them and ``""`` when
    none is under it (a checkpoint of a bare tree)."""
    inside = {n: v for n, v in leaves.items() if n == prefix or n.startswith(prefix + ".")}
    if not inside:
        return dict(leaves), ""
    return {n[len(prefix) + 1 :]: v for n, v in inside.items()}, prefix


def nest(leaves: Mapping[str, Any], where: str) -> Any:
    """Nested dicts from dotted paths (a lone leaf for the root ``""``); sequences come back as
    dicts keyed ``"0"``, ``"1"``, ... (pass ``like=`` for the exact structure)."""
    if set(leaves) == {""}:
        return leaves[""]
    try:
        return unflatten(dict(sorted(leaves.items())), where)
    except ParamsError as err:
        raise CheckpointError(f"{err}; pass like= (e.g. model.init(...)) to load it") from err


def mismatches(saved: Mapping[str, Any], like: Mapping[str, jax.ShapeDtypeStruct]) -> str:
    """Every saved leaf missing from ``like``, extra, or of another shape or dtype, grouped and
    saying which part of `fit`'s tree it is in; "" when they agree. ``saved`` values need only
    ``shape`` and ``dtype``."""
    missing = [n for n in like if n not in saved]
    extra = [n for n in saved if n not in like]
    differ = [
        n
        for n, w in like.items()
        if n in saved
        and (tuple(saved[n].shape) != tuple(w.shape) or jnp.dtype(saved[n].dtype) != w.dtype)
    ]
    described = [
        f"{n or ROOT} (saved {jnp.dtype(saved[n].dtype)}{list(saved[n].shape)}, "
        f"expected {like[n].dtype}{list(like[n].shape)})"
        for n in differ
    ]
    lines = []
    for label, names, shown in (
        ("the checkpoint has no leaf", missing, [n or ROOT for n in missing]),
        ("like= has no leaf", extra, [n or ROOT for n in extra]),
        ("shape or dtype differs for", differ, described),
    ):
        if names:
            parts = ", ".join(sorted({PARTS.get(n.split(".")[0], "other leaves") for n in names}))
            lines.append(f"{label} {_listing(shown)} ({parts})")
    return "; ".join(lines)


def _listing(names: list[str], most: int = 12) -> str:
    shown = ", ".join(names[:most])
    return shown + (f", and {len(names) - most} more" if len(names) > most else "")


# One step of a `jax.tree_util.keystr` path: ['key'] or ["key"], [0] (an index or int key), .attr
_KEYSTR_STEP = re.compile(r"\[('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|-?\d+)\]|\.(\w+)")


def from_keystr(name: str) -> str:
    """The dotted path of a leaf name in the first checkpoint layout (``['a'][0].mu`` → ``a.0.mu``,
    ``<root>`` → ``""``), which named leaves by `jax.tree_util.keystr`.

    Example:
      >>> from_keystr("['opt_state'][0].mu['dense_0']['w']")
      'opt_state.0.mu.dense_0.w'
    """
    if name == "<root>":
        return ""
    steps, end = [], 0
    for match in _KEYSTR_STEP.finditer(name):
        if match.start() != end:
            break
        item, attr = match.groups()
        steps.append(attr if attr is not None else str(ast.literal_eval(item)))
        end = match.end()
    if end != len(name):
        raise CheckpointError(f"leaf name {name!r} of a funcgrad-checkpoint-1 file is not a path")
    return dotted(steps)
