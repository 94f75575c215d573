"""Parameter trees as safetensors files: the `safetensors` package reads and writes, funcgrad checks.

Keys are the dotted paths of `funcgrad.paths`; a file is read memory-mapped, one tensor at a time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from funcgrad.errors import MissingFileError, ParamsError
from funcgrad.io import write_atomic_with
from funcgrad.paths import dotted, flatten, unflatten

__all__ = ["load_safetensors", "save_safetensors"]


def save_safetensors(path: str | os.PathLike[str], params: Any) -> Path:
    """Write a nested dict of arrays to a safetensors file under dotted keys, atomically.

    Every dtype is kept (bfloat16 and float8 included). ``safetensors.numpy.save_file`` writes a
    temporary file beside ``path``, which is fsynced and renamed over it, so a crash leaves any
    previous file whole. It opens with any safetensors reader (``safetensors.torch.load_file``,
    ``safetensors.numpy`` for the dtypes NumPy has, Hugging Face's loaders) and with
    `load_safetensors`.

    Example:
      >>> import tempfile, jax, jax.numpy as jnp
      >>> from funcgrad import interop, nn
      >>> params = nn.Dense(3).init(jax.random.key(0), jnp.zeros((1, 2)))
      >>> path = interop.save_safetensors(tempfile.mkdtemp() + "/dense.safetensors", params)
      >>> jax.tree.map(jnp.shape, interop.load_safetensors(path))
      {'b': (3,), 'w': (2, 3)}
    """
    arrays = {}
    for key, value in flatten(params, "save_safetensors").items():
        if jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
            raise ParamsError(
                f"save_safetensors: '{key}' is a PRNG key array; safetensors holds numbers only "
                "(store jax.random.key_data(key) instead)"
            )
        arrays[key] = np.ascontiguousarray(np.asarray(value))
    path = Path(path)
    write_atomic_with(path, lambda tmp: safetensors.numpy.save_file(arrays, tmp))
    return path


def load_safetensors(path: str | os.PathLike[str], like: Any = None) -> Any:
    """Read a safetensors file into a nested dict of `jax.Array`, dtypes as stored.

    The file is memory-mapped by the ``safetensors`` package and read one tensor at a time, each
    handed to JAX before the next is read: loading needs the memory of the result plus that of
    its largest tensor, not the file twice over.

    Args:
      path: the file.
      like: optional tree (arrays or `jax.ShapeDtypeStruct`, e.g. ``model.init``'s output or
        ``jax.eval_shape`` of it). The file must then hold exactly its paths with its shapes
        and dtypes; a mismatch raises `ParamsError` listing every missing, extra, mis-shaped
        and mis-typed path, before any tensor is read. The result has ``like``'s structure,
        and each leaf ``like``'s sharding where ``like`` holds placed arrays.

    Raises:
      MissingFileError: there is no file at ``path``.
      ParamsError: the file is truncated or not a safetensors file, or does not match ``like``.

    Float64 arrays stay float64 only with ``jax_enable_x64`` on, as for any JAX array.

    Example:
      >>> import tempfile, jax, jax.numpy as jnp
      >>> from funcgrad import interop
      >>> path = tempfile.mkdtemp() + "/p.safetensors"
      >>> _ = interop.save_safetensors(path, {"dense_0": {"w": jnp.ones((2, 2), jnp.bfloat16)}})
      >>> interop.load_safetensors(path)["dense_0"]["w"].dtype
      dtype(bfloat16)
    """
    where = f"load_safetensors({os.fspath(path)!r})"
    with open_safetensors(path) as file:
        entries = {k: file.get_slice(k) for k in file.offset_keys()}
        if like is None:
            # jax.device_put copies once; jnp.asarray of a large array copies twice.
            flat = {k: jax.device_put(read_tensor(file, k, path)) for k in sorted(entries)}
            return unflatten(flat, where)
        want = flatten(like, "load_safetensors(like=...)")
        _check_like({k: (tuple(e.get_shape()), e.get_dtype()) for k, e in entries.items()}, want, where)  # fmt: skip

        def place(key_path: Any, leaf: Any) -> Any:
            value = read_tensor(file, dotted(key_path), path)
            sharding = getattr(leaf, "sharding", None)
            return (
                jax.device_put(value, sharding) if sharding is not None else jax.device_put(value)
            )

        return jax.tree_util.tree_map_with_path(place, like)


@contextmanager
def open_safetensors(
    path: str | os.PathLike[str], where: str = "load_safetensors"
) -> Iterator[Any]:
    """One safetensors file, memory-mapped for NumPy reads, closed on exit; a missing or
    damaged file is an error naming ``where`` (the caller) and the file.

    Example:
      >>> import tempfile, os, jax.numpy as jnp
      >>> path = save_safetensors(os.path.join(tempfile.mkdtemp(), "w.safetensors"), {"w": jnp.ones(2)})
      >>> with open_safetensors(path) as f:
      ...     read_tensor(f, "w", path).tolist()
      [1.0, 1.0]
    """
    if not Path(path).is_file():
        raise MissingFileError(f"{where}: no file at {os.fspath(path)}")
    try:
        file = safetensors.safe_open(path, framework="numpy")
    except Exception as err:  # safetensors raises its own SafetensorError
        raise ParamsError(
            f"{where}: {os.fspath(path)} ({Path(path).stat().st_size} bytes) is not a "
            f"complete safetensors file: {err}. Was it truncated, or written by something else?"
        ) from None
    with file:
        yield file


def code_of(dtype: Any) -> str:
    """safetensors' name of a dtype (``F32``, ``BF16``, ``F8_E4M3``), as the package spells it.

    Example:
      >>> import jax.numpy as jnp
      >>> code_of(jnp.float32), code_of(jnp.bfloat16)
      ('F32', 'BF16')
    """
    name = jnp.dtype(dtype).name
    try:
        return str(safetensors.TensorSpec(dtype=name, shape=[0], data_ptr=0, data_len=0).dtype)
    except Exception:  # a dtype safetensors has no name for
        return name


def read_tensor(file: Any, key: str, path: str | os.PathLike[str]) -> np.ndarray:
    """Tensor ``key`` of ``file`` (from `open_safetensors`) as a NumPy array, float8 and
    bfloat16 included (through ml_dtypes where safetensors' NumPy reader lacks them)."""
    try:
        return np.asarray(file.get_tensor(key))
    except Exception:  # safetensors' NumPy reader lacks float8 (and bfloat16 before 0.5 or so)
        return _ml_dtypes_view(path, key, file.get_slice(key))


def _ml_dtypes_view(path: str | os.PathLike[str], key: str, entry: Any) -> np.ndarray:
    """A read-only memory-mapped view of one tensor in a dtype of ml_dtypes (the float8 family)."""
    code = entry.get_dtype()
    kinds = [getattr(ml_dtypes, n) for n in dir(ml_dtypes) if "float" in n and n != "finfo"]
    matches = [k for k in kinds if code_of(k) == code]
    if not matches:
        raise ParamsError(
            f"load_safetensors: '{key}' in {os.fspath(path)} has dtype {code}, which neither "
            "NumPy nor ml_dtypes has"
        )
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        start, end = json.loads(f.read(size))[key]["data_offsets"]
    raw = np.memmap(path, np.uint8, mode="r", offset=8 + size + start, shape=(end - start,))
    return raw.view(matches[0]).reshape(entry.get_shape())


def _check_like(
    found: Mapping[str, tuple[tuple[int, ...], str]], want: Mapping[str, Any], where: str
) -> None:
    """Every difference between the file's ``{path: (shape, dtype code)}`` and ``like``, at once."""
    missing = sorted(set(want) - set(found))
    extra = sorted(set(found) - set(want))
    shapes, dtypes = [], []
    for key in sorted(set(want) & set(found)):
        (shape, code), exp = found[key], want[key]
        if tuple(exp.shape) != shape:
            shapes.append(f"{key}: expected {tuple(exp.shape)}, file has {shape}")
        elif code_of(exp.dtype) != code:
            name = jnp.dtype(exp.dtype).name
            dtypes.append(f"{key}: expected {name} ({code_of(exp.dtype)}), file has {code}")
    problems = [
        f"missing from the file: {missing}" if missing else "",
        f"in the file but not in `like`: {extra}" if extra else "",
        f"wrong shape: {shapes}" if shapes else "",
        f"wrong dtype: {dtypes}" if dtypes else "",
    ]
    if any(problems):
        raise ParamsError(
            f"{where}: the file does not match `like`; " + "; ".join(p for p in problems if p)
        )
