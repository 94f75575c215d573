"""Checkpoints: pytrees of arrays saved atomically as ``.npz`` (no pickle) with a SHA-256 manifest.

Restore validates against a template tree and names the first leaf whose path, shape or dtype differs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from funcgrad.errors import CheckpointError
from funcgrad.io import write_atomic
from funcgrad.parallel.plan import Mesh, Plan, as_plan, put

FORMAT = "funcgrad-checkpoint-1"
_NAME = re.compile(r"^ckpt_(\d{9})\.npz$")


def _encode(tree: Any) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Flatten to ``{keystr path: array}``; typed PRNG keys become their key data plus impl name."""
    arrays, key_impls = {}, {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        name = jax.tree_util.keystr(path) or "<root>"
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            key_impls[name] = str(jax.random.key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            # Sharded over several hosts: every process joins the gather (save is collective).
            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        arrays[name] = np.asarray(leaf)
    return arrays, key_impls


def save(directory: str | os.PathLike[str], step: int, tree: Any, *, keep: int | None = 3) -> Path:
    """Save ``tree`` (any pytree of arrays, PRNG keys included) as checkpoint ``step`` in ``directory``.

    The arrays go to ``ckpt_{step:09d}.npz`` and their SHA-256 to a JSON manifest, each written
    to a temporary file, fsynced and renamed, so a crash leaves the previous checkpoints whole.
    Older checkpoints beyond the newest ``keep`` are deleted only after the new one is on disk.

    Sharded arrays are saved whole. With several processes, every process calls ``save``
    (arrays spread over hosts are gathered), process 0 writes, and the others wait for it:
    give them a directory they share.

    Example:
      >>> import tempfile, jax.numpy as jnp, funcgrad as fg
      >>> folder = tempfile.mkdtemp()
      >>> _ = fg.train.save(folder, 7, {"w": jnp.ones(3)})
      >>> fg.train.restore(folder, {"w": jnp.zeros(3)})[0]
      7
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(f"cannot create checkpoint directory {directory}: {err}") from err
    if not os.access(directory, os.W_OK):
        raise CheckpointError(f"checkpoint directory {directory} is not writable")
    arrays, key_impls = _encode(tree)
    target = directory / f"ckpt_{step:09d}.npz"
    if jax.process_index() != 0:
        multihost_utils.sync_global_devices(f"funcgrad checkpoint {step}")
        return target
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    data = buffer.getvalue()
    manifest = {
        "format": FORMAT,
        "step": step,
        "file": target.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "leaves": {k: [list(v.shape), str(v.dtype)] for k, v in arrays.items()},
        "prng_keys": key_impls,
    }
    try:
        write_atomic(target, data)
        write_atomic(target.with_suffix(".json"), json.dumps(manifest, indent=1).encode())
    except OSError as err:
        raise CheckpointError(
            f"saving checkpoint {step} to {directory} failed ({err}); earlier checkpoints are intact"
        ) from err
    if keep is not None:
        for old in steps(directory)[:-keep]:
            for suffix in (".npz", ".json"):
                (directory / f"ckpt_{old:09d}{suffix}").unlink(missing_ok=True)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"funcgrad checkpoint {step}")
    return target


def steps(directory: str | os.PathLike[str]) -> list[int]:
    """The steps of the complete checkpoints in ``directory`` (array file and manifest), oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        match = _NAME.match(entry.name)
        if match and entry.with_suffix(".json").exists():
            found.append(int(match.group(1)))
    return sorted(found)


def restore(
    directory: str | os.PathLike[str],
    template: Any,
    *,
    step: int | None = None,
    mesh: Mesh | Plan | None = None,
) -> tuple[int, Any]:
    """Load checkpoint ``step`` (default: the newest) into the structure of ``template``.

    Leaves are placed as the template's are when those are sharded arrays, or on ``mesh``
    by its plan's rule when one is given (each process taking the shards it holds).

    Returns ``(step, tree)``. Raises `CheckpointError` if there is none, if the file's
    SHA-256 differs from its manifest (truncated or corrupted), or if the saved leaves and
    the template's differ, listing every missing, extra, mis-shaped or mis-typed path (and
    saying which are parameters and which optimizer state). The file is read with
    ``allow_pickle=False``: loading never runs code. To get trained weights back from a
    checkpoint `fit` wrote, use `load_params`. A directory that holds only sharded
    checkpoints (`fit` with a mesh) is read with `restore_sharded`.
    """
    if not steps(directory):
        from funcgrad.train import sharded  # it imports this module

        if sharded.sharded_steps(directory):
            return sharded.restore_sharded(directory, template, step=step, mesh=mesh)
    step, arrays, manifest = _read(directory, step)
    return step, _build(arrays, manifest, template, step, directory, mesh)


def _read(
    directory: str | os.PathLike[str], step: int | None
) -> tuple[int, dict[str, np.ndarray], dict[str, Any]]:
    """Checkpoint ``step`` (default: the newest) of ``directory``, checked: its arrays and manifest."""
    directory = Path(directory)
    available = steps(directory)
    if not available:
        raise CheckpointError(f"no checkpoint in {directory}")
    if step is None:
        step = available[-1]
    elif step not in available:
        raise CheckpointError(f"no checkpoint for step {step} in {directory}; have {available}")
    path = directory / f"ckpt_{step:09d}.npz"
    try:
        manifest = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint manifest {path.with_suffix('.json')} is unreadable: {err}"
        ) from err
    if manifest.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a funcgrad checkpoint (format {manifest.get('format')!r})"
        )
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
        raise CheckpointError(
            f"{path} is corrupted or truncated: its SHA-256 differs from the manifest's; not loading it"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as err:
        raise CheckpointError(
            f"{path} holds something other than plain arrays ({err}); refused"
        ) from err
    return step, arrays, manifest


def _build(
    arrays: dict[str, np.ndarray],
    manifest: dict[str, Any],
    template: Any,
    step: int,
    directory: str | os.PathLike[str],
    mesh: Mesh | Plan | None = None,
) -> Any:
    """The template's tree filled with ``arrays``, checked, typed keys rewrapped, placed."""
    problems = _mismatches(arrays, template)
    if problems:
        raise CheckpointError(f"checkpoint {step} in {directory} does not fit: {problems}")
    leaves = []
    for path_keys, like in jax.tree_util.tree_leaves_with_path(template):
        name = jax.tree_util.keystr(path_keys) or "<root>"
        value = arrays[name]
        if _is_key(like):
            leaves.append(
                jax.random.wrap_key_data(jnp.asarray(value), impl=manifest["prng_keys"][name])
            )
        else:
            leaves.append(jnp.asarray(value))
    tree = jax.tree.unflatten(jax.tree.structure(template), leaves)
    plan = as_plan(mesh)
    if plan is not None:
        return plan.place(tree)
    return jax.tree.map(_like, tree, template)


def _like(value: Any, like: Any) -> Any:
    """``value`` placed with ``like``'s sharding when that spans more than one device."""
    sharding = getattr(like, "sharding", None)
    if sharding is None or len(sharding.device_set) <= 1:
        return value
    return put(value, sharding, copy=False)  # value is this restore's own fresh array


def _is_key(like: Any) -> bool:
    return isinstance(like, jax.Array) and jnp.issubdtype(like.dtype, jax.dtypes.prng_key)


_PARTS = {
    "['params']": "parameters",
    "['opt_state']": "optimizer state",
    "['model_state']": "model state",
}


def _mismatches(arrays: dict[str, np.ndarray], template: Any) -> str:
    """Every difference between the saved leaves and the template's, grouped; "" if none."""
    wanted: dict[str, tuple[tuple[int, ...], Any]] = {}
    for path_keys, like in jax.tree_util.tree_leaves_with_path(template):
        name = jax.tree_util.keystr(path_keys) or "<root>"
        data = jax.random.key_data(like) if _is_key(like) else like
        wanted[name] = (tuple(jnp.shape(data)), jnp.result_type(data))
    missing = [n for n in wanted if n not in arrays]
    extra = [n for n in arrays if n not in wanted]
    shaped = [
        f"{n} (saved {arrays[n].dtype}{list(arrays[n].shape)}, expected {w[1]}{list(w[0])})"
        for n, w in wanted.items()
        if n in arrays and (arrays[n].shape != w[0] or arrays[n].dtype != w[1])
    ]
    lines = []
    for label, names in (
        ("the checkpoint has no leaf", missing),
        ("the template has no leaf", extra),
        ("shape or dtype differs for", shaped),
    ):
        if names:
            parts = ", ".join(sorted({_part(n) for n in names}))
            lines.append(f"{label} {_listing(names)} ({parts})")
    return "; ".join(lines)


def _part(name: str) -> str:
    for prefix, label in _PARTS.items():
        if name.startswith(prefix):
            return label
    return "other leaves"


def _listing(names: list[str], most: int = 12) -> str:
    shown = ", ".join(names[:most])
    return shown + (f", and {len(names) - most} more" if len(names) > most else "")


def load_params(
    directory: str | os.PathLike[str], like: Any = None, *, step: int | None = None
) -> Any:
    """The trained parameters in a checkpoint `fit` wrote (or in any checkpoint of a parameter tree).

    `fit` saves ``{"params", "opt_state", "model_state", "step", "key", "sums"}`` (see
    docs/training.md); this reads only ``params``. With ``like`` (a parameter tree, e.g.
    ``model.init(...)`` or its `jax.eval_shape`), the result has its structure and every
    difference is listed; without it, the nested dicts are rebuilt from the saved key
    paths. A checkpoint of a bare tree (saved with `save`) is read whole.

    Example:
      >>> import tempfile, jax.numpy as jnp, funcgrad as fg
      >>> folder = tempfile.mkdtemp()
      >>> _ = fg.train.save(folder, 3, {"params": {"dense_0": {"w": jnp.arange(2.0)}}, "step": 3})
      >>> fg.train.load_params(folder)["dense_0"]["w"].tolist()
      [0.0, 1.0]

    A directory that holds only sharded checkpoints (`fit` with a mesh) is read with
    `load_sharded_params`.
    """
    if not steps(directory):
        from funcgrad.train import sharded  # it imports this module

        if sharded.sharded_steps(directory):
            return sharded.load_sharded_params(directory, like, step=step)
    step, arrays, manifest = _read(directory, step)
    prefix = "['params']"
    if any(n == prefix or n.startswith(prefix + "[") for n in arrays):
        arrays = {
            n[len(prefix) :] or "<root>": a for n, a in arrays.items() if n.startswith(prefix)
        }
        keys = manifest.get("prng_keys", {})
        manifest = {**manifest, "prng_keys": {k[len(prefix) :]: v for k, v in keys.items()}}
    if like is not None:
        return _build(arrays, manifest, like, step, directory)
    return _nest(arrays, step, directory)


_DICT_KEY = re.compile(r"\['((?:[^'\\]|\\.)*)'\]")


def _nest(arrays: dict[str, np.ndarray], step: int, directory: Any) -> Any:
    """Nested dicts rebuilt from ``['a']['b']`` key paths."""
    if set(arrays) == {"<root>"}:
        return jnp.asarray(arrays["<root>"])
    tree: dict[str, Any] = {}
    for name, value in sorted(arrays.items()):
        keys = _DICT_KEY.findall(name)
        if not keys or "".join(f"[{k!r}]" for k in keys) != name:
            raise CheckpointError(
                f"checkpoint {step} in {directory}: leaf {name} is not under dict keys; pass "
                "like= (the parameter tree, e.g. model.init(...)) to load it"
            )
        node = tree
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = jnp.asarray(value)
    return tree
