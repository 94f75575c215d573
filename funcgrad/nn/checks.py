"""Input checks every layer uses: example inputs as specs, PRNG keys, ranks, dtypes, and where in a model.

Each raises a `funcgrad.errors` exception naming the layer by its dotted path before XLA sees anything.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from funcgrad.errors import DonatedError, DTypeError, InputTypeError, ShapeError
from funcgrad.nn.types import Array, Path, Spec
from funcgrad.paths import describe


def path_key(key: Array, path: Path) -> Array:
    """Fold a stable hash of ``path`` into ``key`` (crc32, not Python's salted ``hash``)."""
    return jax.random.fold_in(key, zlib.crc32("/".join(path).encode()) & 0x7FFFFFFF)


def as_spec(x: Any, where: str) -> Any:
    """An example input (array or `jax.ShapeDtypeStruct`, or a tuple of them) as ShapeDtypeStructs.

    Dtypes are JAX's for the mode it runs in: a NumPy float64 input is float32 in 32-bit mode, as
    ``apply`` will see it."""
    if isinstance(x, (tuple, list)):
        return tuple(as_spec(a, where) for a in x)
    if isinstance(x, jax.ShapeDtypeStruct):
        dtype = jax.dtypes.canonicalize_dtype(x.dtype)
        return x if dtype == x.dtype else x.update(dtype=dtype)
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return jax.ShapeDtypeStruct(x.shape, jax.dtypes.canonicalize_dtype(x.dtype))
    try:
        arr = jnp.asarray(x)
    except TypeError:
        raise InputTypeError(
            f"{where}: expected an array or jax.ShapeDtypeStruct as example input; "
            f"got {type(x).__name__}"
        ) from None
    return jax.ShapeDtypeStruct(arr.shape, arr.dtype)


def check_key(key: Any, where: str) -> None:
    """Raise an InputTypeError naming ``where`` unless ``key`` is one PRNG key.

    Example:
      >>> import jax
      >>> check_key(jax.random.key(0), "Dropout.apply")  # fine: returns None
    """
    if not isinstance(key, jax.Array):
        raise InputTypeError(
            f"{where}: expected a PRNG key from jax.random.key; got {type(key).__name__}"
        )
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    raw = key.dtype == jnp.uint32 and key.shape == (2,)
    if not (typed or raw) or (typed and key.shape != ()):
        raise InputTypeError(
            f"{where}: expected a single PRNG key (jax.random.key(seed)); got an array of "
            f"shape {key.shape} and dtype {key.dtype}"
        )


def require_rank(x: Spec, ranks: tuple[int, ...], path: Path, layer: str, layout: str) -> None:
    """Raise a ShapeError naming the layer unless ``x.ndim`` is one of ``ranks``."""
    if x.ndim not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ShapeError(
            f"{layer} at {describe(path)}: expected input of rank {want} {layout}; "
            f"got shape {tuple(x.shape)}"
        )


def require_float(x: Spec, path: Path, layer: str) -> None:
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        raise DTypeError(
            f"{layer} at {describe(path)}: expected a floating-point input; got dtype {x.dtype}"
        )


def compute_dtype(dtype: Any, *arrays: Any) -> Any:
    """The dtype to compute in: ``dtype`` if given, else the promotion of the arrays."""
    return jnp.dtype(dtype) if dtype is not None else jnp.result_type(*arrays)


def channels_last_hint(shape: Sequence[int], channels: int) -> str:
    """A sentence telling a channels-first input ``shape`` how to become channels-last, or ``""``.

    Said only where axis 1 has the ``channels`` the layer expects and the last axis does not.

    Example:
      >>> channels_last_hint((8, 3, 32, 32), 3)
      'funcgrad is channels-last (N, H, W, C) where PyTorch is channels-first (N, C, H, W): this input of shape (8, 3, 32, 32) looks channels-first; pass x.transpose(0, 2, 3, 1), of shape (8, 32, 32, 3)'
      >>> channels_last_hint((8, 32, 32, 3), 3)
      ''
    """
    shape = tuple(shape)  # the batch may be symbolic (an export): compare only the other axes
    if len(shape) < 3 or shape[1] != channels or shape[-1] == channels:
        return ""
    n = len(shape) - 2
    spatial = tuple("DHW"[-n:]) if n <= 3 else ("...",)
    order = (0, *range(2, len(shape)), 1)
    moved = tuple(shape[i] for i in order)
    last, first = ", ".join(("N", *spatial, "C")), ", ".join(("N", "C", *spatial))
    return (
        f"funcgrad is channels-last ({last}) where PyTorch is channels-first ({first}): this "
        f"input of shape {shape} looks channels-first; pass x.transpose{order}, of shape {moved}"
    )


def check_live(tree: Any, what: str) -> None:
    """Raise `DonatedError` if an array of ``tree`` was donated to a step (its buffer is gone).

    Example:
      >>> import jax.numpy as jnp
      >>> check_live({"w": jnp.ones(2)}, "fit")  # fine: returns None
    """
    leaves = jax.tree.leaves(tree)
    concrete = [
        a for a in leaves if isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer)
    ]
    if any(a.is_deleted() for a in concrete):
        raise DonatedError(
            f"{what}: an array passed in was donated to a training step, which reused its "
            "buffer; use the state the step returned (state.params), not the arrays that went "
            "in. TrainState.create and fit copy what you give them, so arrays you pass there "
            "stay valid"
        )
