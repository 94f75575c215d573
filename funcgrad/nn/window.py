"""Arguments of windowed layers (convolutions, pools): per-axis sizes and padding, checked and normalised.

One place for both, so `Conv` and `Pool` read ``kernel_size``/``window``, ``strides`` and ``padding`` alike.
"""

from __future__ import annotations

from collections.abc import Sequence

from funcgrad.errors import ConfigError

Padding = str | int | Sequence[int] | Sequence[tuple[int, int]]


def per_axis(value: int | Sequence[int], n: int, what: str, layer: str) -> tuple[int, ...]:
    """``value`` as ``n`` positive ints (an int is repeated); a ConfigError naming ``layer`` if not.

    Example:
      >>> from funcgrad.nn.window import per_axis
      >>> per_axis(2, 3, "strides", "Conv")
      (2, 2, 2)
    """
    out = (value,) * n if isinstance(value, int) else tuple(value)
    if len(out) != n or not all(isinstance(v, int) and v >= 1 for v in out):
        raise ConfigError(f"{layer}: {what} must be {n} positive ints; got {value!r}")
    return out


def padding_arg(padding: Padding, n: int, layer: str) -> str | list[tuple[int, int]]:
    """``"SAME"``/``"VALID"``, or ``n`` ``(low, high)`` pairs from an int, ints or pairs.

    Example:
      >>> from funcgrad.nn.window import padding_arg
      >>> padding_arg(1, 2, "Conv"), padding_arg("same", 2, "Conv")
      ([(1, 1), (1, 1)], 'SAME')
    """
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ConfigError(f"{layer}: padding must be 'SAME', 'VALID' or ints; got {padding!r}")
        return padding.upper()
    if isinstance(padding, int):
        return [(padding, padding)] * n
    pads = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
    if len(pads) != n or not all(len(p) == 2 for p in pads):
        raise ConfigError(f"{layer}: padding needs {n} ints or (low, high) pairs; got {padding!r}")
    return [(int(lo), int(hi)) for lo, hi in pads]
