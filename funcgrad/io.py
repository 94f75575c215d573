"""Files written so that a crash leaves either the old content or the new, never half of one.

Checkpoints, training histories and exported weights all write through `write_atomic`.
"""

from __future__ import annotations

import os
import tempfile
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
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
