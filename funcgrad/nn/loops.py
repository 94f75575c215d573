"""Whether layers are being traced as the body of a loop (scan, while): `loop_body` marks it.

Layers that have a faster form inside loops (convolutions) ask `in_loop_body`; the training steps and `repeat` set it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_IN_LOOP: contextvars.ContextVar[bool] = contextvars.ContextVar("funcgrad_in_loop", default=False)


@contextlib.contextmanager
def loop_body() -> Iterator[None]:
    """Trace what runs inside as the body of a loop (scan, while).

    Convolutions traced inside take their weight gradient in a form XLA:CPU runs fast in
    loops (see `funcgrad.nn.conv`); `make_multistep`, `fit(fused=)` and `repeat` use it.

    Example:
      >>> from funcgrad.nn.loops import in_loop_body, loop_body
      >>> with loop_body():
      ...     in_loop_body()
      True
      >>> in_loop_body()
      False
    """
    token = _IN_LOOP.set(True)
    try:
        yield
    finally:
        _IN_LOOP.reset(token)


def in_loop_body() -> bool:
    """True while tracing inside `loop_body`.

    Example:
      >>> from funcgrad.nn.loops import in_loop_body
      >>> in_loop_body()
      False
    """
    return _IN_LOOP.get()
