"""The layer protocol's hook for tools that watch a model run: a `Recorder` sees every layer call.

`recording(recorder)` installs one for the ``apply`` calls inside; `funcgrad.inspect.summary` is one user.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any, TypeVar


class Recorder:
    """Listens to every layer call of an ``apply``; `funcgrad.inspect.summary` is one."""

    def enter(self, layer: Any, path: tuple[str, ...], params: Any) -> Any:
        """Called before ``layer`` runs; what it returns is handed to `leave`."""

    def leave(self, token: Any, y: Any) -> None:
        """Called with the layer's output."""


R = TypeVar("R", bound=Recorder)
_RECORDER: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar(
    "funcgrad_layer_recorder", default=None
)


@contextlib.contextmanager
def recording(recorder: R) -> Iterator[R]:
    """Hand every layer call of the ``apply`` calls traced inside to ``recorder``.

    The layer protocol's one hook for tools that watch a model run (`funcgrad.inspect.summary`).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from funcgrad import nn
      >>> from funcgrad.nn.layer import Recorder, recording  # the layer protocol's hook
      >>> class Paths(Recorder):
      ...     def __init__(self): self.seen = []
      ...     def enter(self, layer, path, params): self.seen.append(path)
      >>> model = nn.serial(nn.Dense(2), nn.relu)
      >>> x = jnp.zeros((1, 3))
      >>> params = model.init(jax.random.key(0), x)
      >>> with recording(Paths()) as rec:
      ...     _ = model.apply(params, x)
      >>> rec.seen
      [(), ('dense_0',), ('relu_1',)]
    """
    token = _RECORDER.set(recorder)
    try:
        yield recorder
    finally:
        _RECORDER.reset(token)


def current_recorder() -> Recorder | None:
    """The recorder `recording` installed, or None.

    Example:
      >>> from funcgrad.nn.recording import current_recorder
      >>> current_recorder() is None
      True
    """
    return _RECORDER.get()
