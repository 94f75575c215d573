"""Hints for PyTorch habits: funcgrad is channels-last, so a channels-first input gets the transpose.

Shared by `from_torch` and any loader that meets a PyTorch layout.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["channels_last_hint"]


def channels_last_hint(shape: Sequence[int], channels: int) -> str:
    """A sentence telling a channels-first input ``shape`` how to become channels-last, or ``""``.

    Said only where axis 1 has the ``channels`` the layer expects and the last axis does not.

    Example:
      >>> channels_last_hint((8, 3, 32, 32), 3)
      'funcgrad is channels-last (N, H, W, C) where PyTorch is channels-first (N, C, H, W): this input of shape (8, 3, 32, 32) looks channels-first; pass x.transpose(0, 2, 3, 1), of shape (8, 32, 32, 3)'
      >>> channels_last_hint((8, 32, 32, 3), 3)
      ''
    """
    shape = tuple(int(d) for d in shape)
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
