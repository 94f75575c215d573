"""Files written so that a crash leaves either the old content or the new, never half of one.

Checkpoints, training histories and exported weights all write through `write_atomic` or `write_atomic_with`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, fsynced,
    renamed over ``path``, then the folder fsynced.

    ``mode`` sets the file's permissions (say ``0o644`` for a picture others may read); by
    default they are the temporary file's, readable and writable by the owner only.

    Example:
      >>> import tempfile, pathlib
      >>> from funcgrad.io import write_atomic
      >>> target = pathlib.Path(tempfile.mkdtemp()) / "note.txt"
      >>> write_atomic(target, b"hello")
      >>> target.read_bytes(), [p.name for p in target.parent.iterdir()]
      (b'hello', ['note.txt'])
    """
    write_atomic_with(path, lambda tmp: tmp.write_bytes(data), mode=mode)


def write_atomic_with(
    path: str | os.PathLike[str], write: Callable[[Path], object], *, mode: int | None = None
) -> None:
    """Let ``write(tmp)`` fill a temporary file beside ``path``, then fsync it and rename it over
    ``path`` (and fsync the folder), so that a writer that wants a file name of its own (a
    library's ``save_file``) is as atomic as `write_atomic`, without the data in memory first.
    ``mode`` is as in `write_atomic`.

    Example:
      >>> import tempfile, pathlib
      >>> from funcgrad.io import write_atomic_with
      >>> target = pathlib.Path(tempfile.mkdtemp()) / "note.txt"
      >>> write_atomic_with(target, lambda tmp: tmp.write_text("hello"))
      >>> target.read_text(), [p.name for p in target.parent.iterdir()]
      ('hello', ['note.txt'])
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
