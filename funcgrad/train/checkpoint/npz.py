"""The single-host format: ``ckpt_{step:09d}.npz`` (no pickle) plus a JSON manifest with its SHA-256.

Kept light on purpose: NumPy alone, any dtype JAX uses, and a checksum of the whole that orbax lacks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from funcgrad.errors import CheckpointError, DamagedCheckpointError
from funcgrad.io import write_atomic
from funcgrad.parallel.plan import Plan, put
from funcgrad.paths import leaves_with_paths
from funcgrad.train.checkpoint.leaves import from_keystr, is_key, join, key_impl

# Why not orbax here too: it would make an optional dependency a required one for every
# single-process run, and its store keeps no checksum of the values, so a flipped bit could
# load silently; one .npz with a SHA-256 in its manifest is refused whole when damaged.
FORMAT = "funcgrad-checkpoint-2"  # leaves named by dotted path: params.dense_0.w
KEYSTR_FORMAT = "funcgrad-checkpoint-1"  # leaves named by jax keystr: ['params']['dense_0']['w']
_NAME = re.compile(r"^ckpt_(\d{9})\.npz$")


def file(directory: Path, step: int) -> Path:
    """Where checkpoint ``step`` of ``directory`` keeps its arrays (its manifest: ``.json``)."""
    return directory / f"ckpt_{step:09d}.npz"


def steps(directory: Path) -> list[int]:
    """The steps of the complete checkpoints (array file and manifest) in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        match = _NAME.match(entry.name)
        if match and entry.with_suffix(".json").exists():
            found.append(int(match.group(1)))
    return sorted(found)


def _encode(tree: Any) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``{dotted path: array}``; typed PRNG keys become their key data plus impl name."""
    arrays: dict[str, np.ndarray] = {}
    key_impls = {}
    for name, leaf in leaves_with_paths(tree):
        if name in arrays:
            raise CheckpointError(
                f"two leaves share the path {name!r} (a key contains '.'); rename the key"
            )
        if is_key(leaf):
            key_impls[name] = str(key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            # Sharded over several hosts: every process joins the gather (save is collective).
            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        arrays[name] = np.asarray(leaf)
    return arrays, key_impls


def write(directory: Path, step: int, tree: Any, keep: int | None) -> Path:
    """Checkpoint ``step``: the arrays, then the manifest, each atomically; then the oldest pruned.

    Collective with several processes: arrays spread over hosts are gathered, process 0 writes.
    """
    arrays, key_impls = _encode(tree)
    target = file(directory, step)
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
                file(directory, old).with_suffix(suffix).unlink(missing_ok=True)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"funcgrad checkpoint {step}")
    return target


@dataclasses.dataclass
class Saved:
    """One checkpoint read and checked: ``leaves`` maps dotted paths to arrays."""

    step: int
    where: Path
    leaves: dict[str, np.ndarray]
    key_impls: dict[str, str]

    def load(self, like: Any, prefix: str, plan: Plan | None) -> Any:
        """``like``'s tree of the leaves under ``prefix``, keys rewrapped, placed by ``plan``
        (else as ``like``'s leaves are when those span several devices)."""
        values = []
        for name, x in leaves_with_paths(like):
            full = join(prefix, name)
            value = jnp.asarray(self.leaves[full])
            if is_key(x):
                impl = self.key_impls.get(full) or str(key_impl(x))
                value = jax.random.wrap_key_data(value, impl=impl)
            values.append(value)
        tree = jax.tree.unflatten(jax.tree.structure(like), values)
        if plan is not None:
            return plan.place(tree)
        return jax.tree.map(_placed_like, tree, like)


def _placed_like(value: Any, like: Any) -> Any:
    sharding = getattr(like, "sharding", None)
    if sharding is None or len(sharding.device_set) <= 1:
        return value
    return put(value, sharding, copy=False)  # value is this restore's own fresh array


def read(directory: Path, step: int) -> Saved:
    """Checkpoint ``step``, its SHA-256 checked against the manifest: `DamagedCheckpointError` if
    it differs or the manifest is unreadable; a pickle payload is refused, never loaded."""
    path = file(directory, step)
    manifest_file = path.with_suffix(".json")
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, ValueError) as err:
        raise DamagedCheckpointError(
            f"checkpoint manifest {manifest_file} is unreadable ({err}): corrupted or truncated; "
            "not loading it"
        ) from err
    if manifest.get("format") not in (FORMAT, KEYSTR_FORMAT):
        raise CheckpointError(
            f"{path} is not a funcgrad checkpoint (format {manifest.get('format')!r})"
        )
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DamagedCheckpointError(f"{path} is unreadable ({err}); not loading it") from err
    if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
        raise DamagedCheckpointError(
            f"{path} is corrupted or truncated: its SHA-256 differs from the manifest's; "
            "not loading it"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as err:
        raise CheckpointError(
            f"{path} holds something other than plain arrays ({err}); refused"
        ) from err
    key_impls = manifest.get("prng_keys", {})
    if manifest["format"] == KEYSTR_FORMAT:
        arrays = {from_keystr(k): v for k, v in arrays.items()}
        key_impls = {from_keystr(k): v for k, v in key_impls.items()}
    return Saved(step, path, arrays, key_impls)
