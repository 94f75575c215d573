"""Checkpoints of any pytree: `save`, `restore`, `load_params`, `steps`, the one place that picks a format.

Single-host runs write ``ckpt_{step}.npz`` (npz.py), runs over a mesh ``sharded_{step}/`` (orbax, sharded.py).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import jax

from funcgrad.errors import CheckpointError, ConfigError, DamagedCheckpointError
from funcgrad.parallel.plan import Mesh, Plan, as_plan
from funcgrad.train.checkpoint import npz, sharded
from funcgrad.train.checkpoint.leaves import mismatches, nest, part, wanted


def _writer(mesh: Mesh | Plan | None) -> ModuleType:
    """The format a save uses: sharded (each process writes its own shards) for state laid out
    over a mesh, else the single ``.npz``."""
    return npz if mesh is None else sharded


def _found(directory: Path, mesh: Mesh | Plan | None, only: ModuleType | None) -> list[Any]:
    """``(step, format)`` of every checkpoint in ``directory``, the one to read first first.

    This is the one rule for reading: the newest step wins, whichever format holds it; at the
    same step, the sharded one when a mesh is given, else the ``.npz``.
    """
    prefer = [sharded, npz] if mesh is not None else [npz, sharded]
    formats = [f for f in prefer if only is None or f is only]
    found = [(s, rank, f) for rank, f in enumerate(formats) for s in f.steps(directory)]
    return [(s, f) for s, _, f in sorted(found, key=lambda t: (-t[0], t[1]))]


def _made(directory: str | os.PathLike[str]) -> Path:
    """``directory``, created if missing; a `CheckpointError` if it cannot be."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(f"cannot create checkpoint directory {directory}: {err}") from err
    return directory


def steps(directory: str | os.PathLike[str]) -> list[int]:
    """The steps of the complete checkpoints in ``directory`` (either format), oldest first.

    Example:
      >>> import tempfile, jax.numpy as jnp, funcgrad as fg
      >>> folder = tempfile.mkdtemp()
      >>> _ = fg.train.save(folder, 5, {"w": jnp.ones(3)})
      >>> fg.train.steps(folder)
      [5]
    """
    return sorted({s for s, _ in _found(Path(directory), None, None)})


def save(
    directory: str | os.PathLike[str],
    step: int,
    tree: Any,
    *,
    keep: int | None = 3,
    mesh: Mesh | Plan | None = None,
) -> Path:
    """Save ``tree`` (any pytree of arrays, typed PRNG keys included) as checkpoint ``step``.

    Without ``mesh``: ``ckpt_{step:09d}.npz`` (NumPy, no pickle; leaves named by dotted path,
    ``params.dense_0.w``) and a JSON manifest with its SHA-256, each written to a temporary
    file, fsynced and renamed, so a crash leaves the previous checkpoints whole. Sharded arrays
    are gathered whole; with several processes every process calls ``save``, process 0 writes.

    With ``mesh`` (the `jax.sharding.Mesh` or `funcgrad.parallel.Plan` the tree is laid out
    on): ``sharded_{step:09d}/`` in orbax's format, each process writing only the shards it
    holds, nothing gathered (needs ``funcgrad[orbax]``).

    Older checkpoints beyond the newest ``keep`` are deleted once the new one is complete.
    Give several processes a directory they share.

    Example:
      >>> import tempfile, jax.numpy as jnp, funcgrad as fg
      >>> folder = tempfile.mkdtemp()
      >>> _ = fg.train.save(folder, 7, {"w": jnp.ones(3)})
      >>> fg.train.restore(folder, {"w": jnp.zeros(3)})[0]
      7
    """
    directory = _made(directory)
    if not os.access(directory, os.W_OK):
        raise CheckpointError(f"checkpoint directory {directory} is not writable")
    path: Path = _writer(mesh).write(directory, step, tree, keep)
    return path


def restore(
    directory: str | os.PathLike[str],
    like: Any = None,
    *,
    step: int | None = None,
    mesh: Mesh | Plan | None = None,
    template: Any = None,
) -> tuple[int, Any]:
    """Load checkpoint ``step`` (default: the newest intact one) into the structure of ``like``.

    ``like`` is a tree of arrays or of `jax.ShapeDtypeStruct` (`jax.eval_shape` of the init):
    only its structure, shapes, dtypes, key implementations and shardings are used. Leaves are
    laid out by ``mesh``'s plan when given (each process taking the shards it holds), else as
    ``like``'s leaves are. Either format is read (see `steps`); the newest step wins, and at
    the same step the sharded one when ``mesh`` is given.

    A damaged newest checkpoint (a truncated or bit-flipped ``.npz``, whose SHA-256 differs
    from its manifest; sharded files that orbax's store cannot read) is skipped with a
    `RuntimeWarning` naming it, and the newest intact one is loaded. Asked for that ``step``,
    it raises `CheckpointError` listing the intact steps.

    Returns ``(step, tree)``. Raises `CheckpointError` if there is none, or if the saved
    leaves and ``like``'s differ, listing every missing, extra, mis-shaped or mis-typed
    path (and saying which are parameters and which optimizer state). Loading never runs
    code: no pickle. ``template=`` is the old name of ``like`` (deprecated).
    """
    if template is not None:
        if like is not None:
            raise ConfigError("restore: pass like= only (template= is its deprecated name)")
        warnings.warn(
            "restore(template=...) is deprecated; pass like=... (the same tree)",
            DeprecationWarning,
            stacklevel=2,
        )
        like = template
    if like is None:
        raise ConfigError(
            "restore: like= is required (the tree to fill, e.g. jax.eval_shape of the init); "
            "load_params reads parameters without one"
        )
    return _load(Path(directory), like, step, mesh, "", None)


def load_params(
    directory: str | os.PathLike[str],
    like: Any = None,
    *,
    step: int | None = None,
    mesh: Mesh | Plan | None = None,
) -> Any:
    """The trained parameters in a checkpoint `fit` wrote (or in any checkpoint of a parameter tree).

    `fit` saves ``{"params", "opt_state", "model_state", "key"}`` (see docs/training.md);
    only ``params`` is read. With ``like`` (a parameter tree, e.g. ``model.init(...)`` or its
    `jax.eval_shape`), the result has its structure and every difference is listed; without
    it, the nested dicts are rebuilt from the saved dotted paths. A checkpoint of a bare tree
    is read whole. Either format; a damaged newest checkpoint is skipped as in `restore`.

    Example:
      >>> import tempfile, jax.numpy as jnp, funcgrad as fg
      >>> folder = tempfile.mkdtemp()
      >>> _ = fg.train.save(folder, 3, {"params": {"dense_0": {"w": jnp.arange(2.0)}}, "step": 3})
      >>> fg.train.load_params(folder)["dense_0"]["w"].tolist()
      [0.0, 1.0]
    """
    return _load(Path(directory), like, step, mesh, "params", None)[1]


def _load(
    directory: Path,
    like: Any,
    step: int | None,
    mesh: Mesh | Plan | None,
    prefix: str,
    only: ModuleType | None,
) -> tuple[int, Any]:
    """The first intact checkpoint of `_found`'s order (or ``step``'s), ``like``'s part ``prefix``."""
    plan = as_plan(mesh)
    kind = "sharded checkpoint" if only is sharded else "checkpoint"
    found = _found(directory, mesh, only)
    if not found:
        raise CheckpointError(f"no {kind} in {directory}")
    tries = found if step is None else [(s, f) for s, f in found if s == step]
    if not tries:
        have = sorted({s for s, _ in found})
        raise CheckpointError(f"no {kind} for step {step} in {directory}; have {have}")
    damage: list[DamagedCheckpointError] = []
    for i, (s, form) in enumerate(tries):
        try:
            return s, _fill(form.read(directory, s), like, prefix, plan, directory)
        except DamagedCheckpointError as err:
            damage.append(err)
            if i + 1 < len(tries):
                warnings.warn(
                    f"{err}; falling back to the next newest checkpoint",
                    RuntimeWarning,
                    stacklevel=3,
                )
    if step is not None:
        intact = _intact([(s, f) for s, f in found if s != step], directory)
        raise CheckpointError(
            f"{damage[-1]}; the intact {kind}s in {directory} are steps {intact}"
        ) from damage[-1]
    raise CheckpointError(
        f"every {kind} in {directory} is damaged: {'; '.join(map(str, damage))}"
    ) from damage[-1]


def _intact(candidates: list[Any], directory: Path) -> list[int]:
    """The steps among ``candidates`` whose files pass their format's checks."""
    good = set()
    for s, form in candidates:
        try:
            form.read(directory, s)
        except DamagedCheckpointError:
            continue
        good.add(s)
    return sorted(good)


def _fill(saved: Any, like: Any, prefix: str, plan: Plan | None, directory: Path) -> Any:
    """``saved``'s leaves under ``prefix`` as ``like``'s tree (nested dicts without one), checked."""
    leaves, prefix = part(saved.leaves, prefix) if prefix else (saved.leaves, "")
    if like is None:  # built from the saved leaves, so it fits them
        shapes = {n: jax.ShapeDtypeStruct(tuple(v.shape), v.dtype) for n, v in leaves.items()}
        return saved.load(nest(shapes, f"checkpoint {saved.where}"), prefix, plan)
    problems = mismatches(leaves, wanted(like))
    if problems:
        what = "its parameters do" if prefix == "params" else "it does"
        raise CheckpointError(
            f"checkpoint {saved.step} in {directory} ({saved.where.name}): {what} not fit: "
            f"{problems}"
        )
    return saved.load(like, prefix, plan)


def save_sharded(
    directory: str | os.PathLike[str], step: int, tree: Any, *, keep: int | None = 3
) -> Path:
    """`save` in the sharded format whatever the layout: ``directory/sharded_{step:09d}/``.

    Every process calls it (it is collective) with the same tree of arrays, sharded or not;
    each writes only the shards it holds. Typed PRNG keys are saved as their key data.

    Example:
      >>> import tempfile, jax, jax.numpy as jnp, funcgrad as fg
      >>> folder = tempfile.mkdtemp()
      >>> _ = fg.train.save_sharded(folder, 7, {"w": jnp.arange(4.0), "key": jax.random.key(0)})
      >>> step, tree = fg.train.restore_sharded(folder, {"w": jnp.zeros(4), "key": jax.random.key(1)})
      >>> step, tree["w"].tolist(), fg.train.sharded_steps(folder)
      (7, [0.0, 1.0, 2.0, 3.0], [7])
    """
    directory = _made(directory)
    path: Path = sharded.write(directory, step, tree, keep)
    return path


def sharded_steps(directory: str | os.PathLike[str]) -> list[int]:
    """The steps of the committed sharded checkpoints in ``directory``, oldest first."""
    return [s for s, _ in reversed(_found(Path(directory), None, sharded))]


def restore_sharded(
    directory: str | os.PathLike[str],
    like: Any,
    *,
    step: int | None = None,
    mesh: Mesh | Plan | None = None,
) -> tuple[int, Any]:
    """`restore` reading only the sharded checkpoints of ``directory``.

    Example:
      >>> import tempfile, jax, jax.numpy as jnp, funcgrad as fg
      >>> folder = tempfile.mkdtemp()
      >>> _ = fg.train.save_sharded(folder, 2, {"w": jnp.ones((8, 2), jnp.float32)})
      >>> plan = fg.parallel.plan(fg.parallel.mesh(data=-1), "replicate")
      >>> step, tree = fg.train.restore_sharded(folder, {"w": jax.ShapeDtypeStruct((8, 2), jnp.float32)}, mesh=plan)
      >>> step, float(tree["w"].sum()), tree["w"].sharding.mesh == plan.mesh
      (2, 16.0, True)
    """
    return _load(Path(directory), like, step, mesh, "", sharded)


def load_sharded_params(
    directory: str | os.PathLike[str],
    like: Any = None,
    *,
    step: int | None = None,
    mesh: Mesh | Plan | None = None,
) -> Any:
    """`load_params` reading only the sharded checkpoints of ``directory``."""
    return _load(Path(directory), like, step, mesh, "params", sharded)[1]
