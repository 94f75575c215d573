"""The sharded format, through orbax: ``sharded_{step:09d}/``, each process writing the shards it holds.

For state laid out over a mesh (one host or many); it restores onto the same mesh, another one, or one device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
from jax.sharding import SingleDeviceSharding

from funcgrad.errors import CheckpointError, DamagedCheckpointError, MissingToolError
from funcgrad.parallel.plan import Plan
from funcgrad.paths import leaves_with_paths
from funcgrad.train.checkpoint.leaves import is_key, key_impl, stored

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


def folder(directory: Path, step: int) -> Path:
    """Where sharded checkpoint ``step`` of ``directory`` lives."""
    return directory / f"sharded_{step:09d}"


def steps(directory: Path) -> list[int]:
    """The steps of the committed sharded checkpoints in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [
        int(m.group(1))
        for entry in directory.iterdir()
        if (m := _NAME.match(entry.name)) and (entry / _COMMITTED).exists()
    ]
    return sorted(found)


def write(directory: Path, step: int, tree: Any, keep: int | None) -> Path:
    """Checkpoint ``step`` in orbax's OCDBT store; collective, nothing gathered. orbax writes into
    a temporary folder and renames it once every process is done. Then the oldest are pruned."""
    ocp = _orbax()
    data = jax.tree.map(lambda x: jax.random.key_data(x) if is_key(x) else x, tree)
    target = folder(directory, step)
    try:
        with _checkpointer() as checkpointer:
            checkpointer.save(target.absolute(), args=ocp.args.StandardSave(data), force=True)
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"saving sharded checkpoint {step} to {directory} failed ({err}); earlier "
            "checkpoints are intact"
        ) from err
    if keep is not None and jax.process_index() == 0:
        for old in steps(directory)[:-keep]:
            shutil.rmtree(folder(directory, old), ignore_errors=True)
    return target


@dataclasses.dataclass
class Saved:
    """One sharded checkpoint whose metadata was read: ``leaves`` maps dotted paths to orbax's
    record of each leaf (shape and dtype); the values are read by `load`."""

    step: int
    where: Path
    leaves: dict[str, Any]

    def load(self, like: Any, prefix: str, plan: Plan | None) -> Any:
        """``like``'s tree of the leaves under ``prefix`` (only those are read), laid out by
        ``plan``'s rule (keys whole on every device), else as ``like``'s leaves are, else on
        this process's first device; each process reads only the pieces of its shards."""
        ocp = _orbax()
        shardings = _target_shardings(like, plan)
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(stored(x).shape, stored(x).dtype, sharding=s),
            like,
            shardings,
        )
        if prefix:
            abstract = {prefix: abstract}
            restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
            args = ocp.args.PyTreeRestore(abstract, restore_args=restore_args, partial_restore=True)
        else:
            args = ocp.args.StandardRestore(abstract)
        try:
            with _checkpointer(partial=bool(prefix)) as checkpointer:
                data = checkpointer.restore(self.where.absolute(), args=args)
        except (OSError, ValueError) as err:
            raise DamagedCheckpointError(
                f"{self.where} is corrupted or truncated; not loading it ({str(err)[:400]})"
            ) from err
        if prefix:
            data = data[prefix]
        return jax.tree.map(
            lambda x, d: jax.random.wrap_key_data(d, impl=key_impl(x)) if is_key(x) else d,
            like,
            data,
        )


def _target_shardings(like: Any, plan: Plan | None) -> Any:
    default = SingleDeviceSharding(jax.local_devices()[0])
    if plan is not None:
        by_rule = plan.shardings(like)
        return jax.tree.map(lambda x, s: plan.replicated if is_key(x) else s, like, by_rule)
    return jax.tree.map(lambda x: getattr(x, "sharding", None) or default, like)


def read(directory: Path, step: int) -> Saved:
    """Checkpoint ``step``'s metadata (its leaves' paths, shapes and dtypes as orbax recorded
    them); `DamagedCheckpointError` if it is missing or unreadable."""
    where = folder(directory, step)
    try:
        with _checkpointer() as checkpointer:
            item = checkpointer.metadata(where.absolute()).item_metadata
    except (OSError, ValueError, KeyError) as err:
        raise DamagedCheckpointError(
            f"{where}: its metadata is unreadable ({err}); corrupted or truncated; not loading it"
        ) from err
    if item is None:  # orbax logs why and returns nothing
        raise DamagedCheckpointError(
            f"{where}: its metadata (_METADATA) is missing or unreadable; corrupted or "
            "truncated; not loading it"
        )
    return Saved(step, where, dict(leaves_with_paths(item.tree)))
