"""Sharded checkpoints through orbax: each process writes the shards it holds and reads those it needs.

For state laid out over a mesh (one host or many); restore onto the same mesh, another one, or one device.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding

from funcgrad.errors import MissingToolError
from funcgrad.parallel.plan import Mesh, Plan, as_plan, path_name
from funcgrad.train.checkpoint import CheckpointError

_NAME = re.compile(r"^sharded_(\d{9})$")
_COMMITTED = "_CHECKPOINT_METADATA"  # orbax writes it last, before the rename that commits


def _orbax() -> Any:
    """orbax.checkpoint, imported on first use: it is an optional extra."""
    try:
        import orbax.checkpoint as ocp
    except ImportError as err:
        raise MissingToolError(
            "sharded checkpoints need orbax-checkpoint: pip install 'funcgrad[orbax]'"
        ) from err
    return ocp


@contextlib.contextmanager
def _checkpointer(partial: bool = False) -> Iterator[Any]:
    """An orbax checkpointer (a partial restore needs the PyTree handler), closed after use."""
    ocp = _orbax()
    handler = ocp.PyTreeCheckpointHandler() if partial else ocp.StandardCheckpointHandler()
    checkpointer = ocp.Checkpointer(handler)
    try:
        yield checkpointer
    finally:
        checkpointer.close()


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array | jax.ShapeDtypeStruct) and jnp.issubdtype(
        x.dtype, jax.dtypes.prng_key
    )


def sharded_steps(directory: str | os.PathLike[str]) -> list[int]:
    """The steps of the complete sharded checkpoints in ``directory``, oldest first.

    Example:
      >>> import tempfile, jax.numpy as jnp, funcgrad as fg
      >>> folder = tempfile.mkdtemp()
      >>> _ = fg.train.save_sharded(folder, 5, {"w": jnp.ones(3)})
      >>> fg.train.sharded_steps(folder)
      [5]
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [
        int(m.group(1))
        for entry in directory.iterdir()
        if (m := _NAME.match(entry.name)) and (entry / _COMMITTED).exists()
    ]
    return sorted(found)


def save_sharded(
    directory: str | os.PathLike[str], step: int, tree: Any, *, keep: int | None = 3
) -> Path:
    """Save ``tree`` as sharded checkpoint ``step``: ``directory/sharded_{step:09d}/``, in orbax's format.

    Every process calls it (it is collective) with the same tree of arrays, sharded or
    not; each writes only the shards it holds (orbax's OCDBT store, one
    ``ocdbt.process_{i}`` folder per process), nothing is gathered. orbax writes into a
    temporary folder and renames it once every process is done, so a save that dies
    midway leaves no checkpoint behind and the earlier ones whole. Typed PRNG keys are
    saved as their key data. Older checkpoints beyond the newest ``keep`` are then deleted
    (by process 0). The directory must be shared by all processes.

    Example:
      >>> import tempfile, jax, jax.numpy as jnp, funcgrad as fg
      >>> folder = tempfile.mkdtemp()
      >>> _ = fg.train.save_sharded(folder, 7, {"w": jnp.arange(4.0), "key": jax.random.key(0)})
      >>> step, tree = fg.train.restore_sharded(folder, {"w": jnp.zeros(4), "key": jax.random.key(1)})
      >>> step, tree["w"].tolist()
      (7, [0.0, 1.0, 2.0, 3.0])
    """
    ocp = _orbax()
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(f"cannot create checkpoint directory {directory}: {err}") from err
    data = jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)
    target = directory / f"sharded_{step:09d}"
    try:
        with _checkpointer() as checkpointer:
            checkpointer.save(target.absolute(), args=ocp.args.StandardSave(data), force=True)
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"saving sharded checkpoint {step} to {directory} failed ({err}); earlier "
            "checkpoints are intact"
        ) from err
    if keep is not None and jax.process_index() == 0:
        for old in sharded_steps(directory)[:-keep]:
            shutil.rmtree(directory / f"sharded_{old:09d}", ignore_errors=True)
    return target


def _target_shardings(like: Any, plan: Plan | None) -> Any:
    """Where each leaf goes: by ``plan``'s rule (keys whole on every device), else as ``like``'s
    leaf is placed, else on the default device."""
    default = SingleDeviceSharding(jax.local_devices()[0])
    if plan is not None:
        by_rule = plan.shardings(like)
        return jax.tree.map(lambda x, s: plan.replicated if _is_key(x) else s, like, by_rule)
    return jax.tree.map(lambda x: getattr(x, "sharding", None) or default, like)


def _saved(directory: Path, step: int | None) -> tuple[int, Path, dict[str, Any]]:
    """Checkpoint ``step`` (default: the newest) of ``directory``: its step, folder, and
    ``{path: leaf metadata}`` as orbax recorded them."""
    available = sharded_steps(directory)
    if not available:
        raise CheckpointError(f"no sharded checkpoint in {directory}")
    if step is None:
        step = available[-1]
    elif step not in available:
        raise CheckpointError(
            f"no sharded checkpoint for step {step} in {directory}; have {available}"
        )
    folder = directory / f"sharded_{step:09d}"
    try:
        with _checkpointer() as checkpointer:
            item = checkpointer.metadata(folder.absolute()).item_metadata
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"{folder}: its metadata is unreadable ({err}); corrupted or truncated"
        ) from err
    if item is None:  # orbax logs why and returns nothing
        raise CheckpointError(
            f"{folder}: its metadata (_METADATA) is missing or unreadable; corrupted or truncated"
        )
    meta = item.tree
    leaves = jax.tree_util.tree_leaves_with_path(meta)
    return step, folder, {path_name(p): m for p, m in leaves}


def _mismatches(saved: dict[str, Any], wanted: dict[str, jax.ShapeDtypeStruct]) -> str:
    """Every path missing, extra or of another shape or dtype; "" if none."""
    missing = sorted(set(wanted) - set(saved))
    extra = sorted(set(saved) - set(wanted))
    differs = [
        f"{n} (saved {saved[n].dtype}{list(saved[n].shape)}, expected {w.dtype}{list(w.shape)})"
        for n, w in wanted.items()
        if n in saved
        and (tuple(saved[n].shape) != tuple(w.shape) or jnp.dtype(saved[n].dtype) != w.dtype)
    ]
    lines = [
        f"{label} {', '.join(names)}"
        for label, names in (
            ("the checkpoint has no leaf", missing),
            ("the template has no leaf", extra),
            ("shape or dtype differs for", differs),
        )
        if names
    ]
    return "; ".join(lines)


def _key_data(x: Any) -> Any:
    """The shape and dtype of a key's data (of a leaf that is not a key: the leaf's)."""
    return jax.eval_shape(jax.random.key_data, x) if _is_key(x) else x


def _impl(x: Any) -> Any:
    """A key's implementation; `jax.random.key_impl` takes no `jax.ShapeDtypeStruct`."""
    return x.dtype._impl if isinstance(x, jax.ShapeDtypeStruct) else jax.random.key_impl(x)


def _restore(folder: Path, like: Any, shardings: Any, partial: bool) -> Any:
    """The arrays of ``folder`` shaped like ``like`` and laid out by ``shardings``, keys rewrapped."""
    ocp = _orbax()
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(
            jnp.shape(_key_data(x)), jnp.result_type(_key_data(x)), sharding=s
        ),
        like,
        shardings,
    )
    try:
        if partial:
            restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
            args = ocp.args.PyTreeRestore(abstract, restore_args=restore_args, partial_restore=True)
        else:
            args = ocp.args.StandardRestore(abstract)
        with _checkpointer(partial) as checkpointer:
            data = checkpointer.restore(folder.absolute(), args=args)
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"{folder} is corrupted or truncated; not loading it ({str(err)[:400]})"
        ) from err
    return jax.tree.map(
        lambda x, d: jax.random.wrap_key_data(d, impl=_impl(x)) if _is_key(x) else d,
        like,
        data,
    )


def _wanted(like: Any) -> dict[str, jax.ShapeDtypeStruct]:
    out = {}
    for p, x in jax.tree_util.tree_leaves_with_path(like):
        data = _key_data(x)
        out[path_name(p)] = jax.ShapeDtypeStruct(jnp.shape(data), jnp.result_type(data))
    return out


def restore_sharded(
    directory: str | os.PathLike[str],
    like: Any,
    *,
    step: int | None = None,
    mesh: Mesh | Plan | None = None,
) -> tuple[int, Any]:
    """Load sharded checkpoint ``step`` (default: the newest) into the structure of ``like``.

    ``like`` is a tree of arrays or of `jax.ShapeDtypeStruct` (e.g. `jax.eval_shape` of the
    model's init): nothing of it is read but shapes, dtypes, PRNG key implementations and
    shardings. The leaves are laid out by ``mesh``'s plan when given (a `jax.sharding.Mesh`:
    replicated; a `funcgrad.parallel.Plan`: its rule, keys replicated), else as ``like``'s
    leaves are, else on one device; the mesh may differ from the one that saved (8 devices
    saved, 4 or 1 restored). Each process reads only the pieces of the shards it holds.

    Returns ``(step, tree)``. Raises `CheckpointError` if there is none, if the saved leaves
    and ``like``'s differ (listing every missing, extra, mis-shaped or mis-typed path), or
    if the files are truncated or corrupted where orbax's store notices it (it keeps no
    checksum of the values).

    Example:
      >>> import tempfile, jax, jax.numpy as jnp, funcgrad as fg
      >>> folder = tempfile.mkdtemp()
      >>> _ = fg.train.save_sharded(folder, 2, {"w": jnp.ones((8, 2), jnp.float32)})
      >>> plan = fg.parallel.plan(fg.parallel.mesh(data=-1), "replicate")
      >>> step, tree = fg.train.restore_sharded(folder, {"w": jax.ShapeDtypeStruct((8, 2), jnp.float32)}, mesh=plan)
      >>> step, float(tree["w"].sum()), tree["w"].sharding.mesh == plan.mesh
      (2, 16.0, True)
    """
    directory = Path(directory)
    step, folder, saved = _saved(directory, step)
    problems = _mismatches(saved, _wanted(like))
    if problems:
        raise CheckpointError(f"sharded checkpoint {step} in {directory} does not fit: {problems}")
    return step, _restore(folder, like, _target_shardings(like, as_plan(mesh)), partial=False)


def load_sharded_params(
    directory: str | os.PathLike[str],
    like: Any = None,
    *,
    step: int | None = None,
    mesh: Mesh | Plan | None = None,
) -> Any:
    """The parameters in a sharded checkpoint that `fit` wrote: only ``params`` is read.

    With ``like`` (the parameter tree or its `jax.eval_shape`) the result has its structure
    and every difference is listed; without it, it is the nested dicts as saved, on one
    device. A checkpoint of a bare tree (no ``params`` key) is read whole. `load_params`
    calls this when ``directory`` holds sharded checkpoints only.

    Example:
      >>> import tempfile, jax.numpy as jnp, funcgrad as fg
      >>> folder = tempfile.mkdtemp()
      >>> _ = fg.train.save_sharded(folder, 3, {"params": {"w": jnp.arange(2.0)}, "key": jnp.zeros(2)})
      >>> fg.train.load_sharded_params(folder)["w"].tolist()
      [0.0, 1.0]
    """
    directory = Path(directory)
    step, folder, saved = _saved(directory, step)
    nested = any(n == "params" or n.startswith("params/") for n in saved)
    if nested:
        saved = {
            n[len("params") :].lstrip("/"): m
            for n, m in saved.items()
            if n == "params" or n.startswith("params/")
        }
    if like is None:
        like = _nest(saved)
    problems = _mismatches(saved, _wanted(like))
    if problems:
        raise CheckpointError(
            f"sharded checkpoint {step} in {directory}: the parameters do not fit: {problems}"
        )
    shardings = _target_shardings(like, as_plan(mesh))
    if not nested:
        return _restore(folder, like, shardings, partial=False)
    return _restore(folder, {"params": like}, {"params": shardings}, partial=True)["params"]


def _nest(saved: dict[str, Any]) -> Any:
    """Nested dicts of `jax.ShapeDtypeStruct` from ``a/b/c`` paths (a lone leaf for ``""``)."""
    if set(saved) == {""}:
        return jax.ShapeDtypeStruct(tuple(saved[""].shape), jnp.dtype(saved[""].dtype))
    tree: dict[str, Any] = {}
    for name, meta in sorted(saved.items()):
        *parents, last = name.split("/")
        node = tree
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = jax.ShapeDtypeStruct(tuple(meta.shape), jnp.dtype(meta.dtype))
    return tree
