"""Checkpoints: pytrees of arrays saved atomically as ``.npz`` (no pickle) with a SHA-256 manifest.

Restore validates against a template tree and names the first leaf whose path, shape or dtype differs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from funcgrad.errors import FuncgradError
from funcgrad.parallel.plan import Mesh, Plan, as_plan, put

FORMAT = "funcgrad-checkpoint-1"
_NAME = re.compile(r"^ckpt_(\d{9})\.npz$")


class CheckpointError(FuncgradError, ValueError):
    """A checkpoint is missing, corrupted, foreign, or does not fit the model it is restored into."""


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


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync it, rename over ``path``, fsync the folder."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
        _write_atomic(target, data)
        _write_atomic(target.with_suffix(".json"), json.dumps(manifest, indent=1).encode())
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
    SHA-256 differs from its manifest (truncated or corrupted), or if a leaf's path, shape
    or dtype differs from the template's (naming the first one). The file is read with
    ``allow_pickle=False``: loading never runs code.
    """
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
    leaves = []
    for path_keys, like in jax.tree_util.tree_leaves_with_path(template):
        name = jax.tree_util.keystr(path_keys) or "<root>"
        if name not in arrays:
            raise CheckpointError(
                f"checkpoint {step} has no leaf {name}, which the template has; it was saved "
                f"from another model (its leaves: {sorted(arrays)[:5]}...)"
            )
        value = arrays.pop(name)
        is_key = isinstance(like, jax.Array) and jnp.issubdtype(like.dtype, jax.dtypes.prng_key)
        want_shape = jax.random.key_data(like).shape if is_key else jnp.shape(like)
        want_dtype = jax.random.key_data(like).dtype if is_key else jnp.result_type(like)
        if value.shape != tuple(want_shape) or value.dtype != want_dtype:
            raise CheckpointError(
                f"checkpoint {step}, leaf {name}: saved {value.dtype}{list(value.shape)}, the "
                f"template expects {want_dtype}{list(want_shape)}"
            )
        if is_key:
            leaves.append(jax.random.wrap_key_data(value, impl=manifest["prng_keys"][name]))
        else:
            leaves.append(jnp.asarray(value))
    if arrays:
        raise CheckpointError(
            f"checkpoint {step} has leaves the template lacks, first {sorted(arrays)[0]}; it was "
            "saved from another model"
        )
    tree = jax.tree.unflatten(jax.tree.structure(template), leaves)
    plan = as_plan(mesh)
    if plan is not None:
        return step, plan.place(tree)
    return step, jax.tree.map(_like, tree, template)


def _like(value: Any, like: Any) -> Any:
    """``value`` placed with ``like``'s sharding when that spans more than one device."""
    sharding = getattr(like, "sharding", None)
    if sharding is None or len(sharding.device_set) <= 1:
        return value
    return put(value, sharding, copy=False)  # value is this restore's own fresh array
