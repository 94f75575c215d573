"""Shared helpers of `funcgrad.inspect`: tracing with a clear error, and short text for shapes and sizes.

Private to the package.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from funcgrad.errors import TraceError


def trace(run: Callable[[], Any], name: str, where: str = "inspect.graph") -> Any:
    try:
        return run()
    except jax.errors.ConcretizationTypeError as err:
        first = str(err).strip().splitlines()[0]
        raise TraceError(
            f"{where}: {name} cannot be traced: it uses Python control flow (if, while, "
            f"bool(), int()) on a traced value, so its graph depends on the data. Use "
            f"jnp.where, jax.lax.cond or jax.lax.while_loop instead. JAX said: {first}"
        ) from None


def aval_str(x: Any) -> str:
    shape = ",".join(str(d) for d in getattr(x, "shape", ()))
    dtype = getattr(x, "dtype", None)
    short = jnp.dtype(dtype).str[1:] if dtype is not None else "?"
    short = {"f2": "f16", "f4": "f32", "f8": "f64", "i4": "i32", "i8": "i64", "b1": "bool",
             "u4": "u32", "i2": "i16", "u1": "u8", "i1": "i8"}.get(short, str(dtype))  # fmt: skip
    if str(dtype) == "bfloat16":
        short = "bf16"
    return f"{short}[{shape}]"


def human_count(n: float | None) -> str:
    if n is None:
        return "not reported"
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit} ({n:,.0f})"
    return f"{n:,.0f}"


def human_bytes(n: float | None) -> str:
    if n is None:
        return "not reported"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:,.0f} B"
