"""What the tests need to know about the backend they run on: which devices make a mesh, how
closely one computation compiled two ways (jit and eager, vmap and a batch) agrees there, and how
a compile-bound test that checks only what runs asks XLA for its cheapest compiles."""

import contextlib
from collections.abc import Iterator

import jax
import numpy as np

BACKEND = jax.default_backend()
ON_CPU = BACKEND == "cpu"


def cpu_devices(n: int = 8) -> list:
    """``n`` CPU devices (tests/conftest.py simulates 8), whatever the default backend is."""
    devices = jax.devices("cpu")
    assert len(devices) >= n, f"the tests need {n} CPU devices; got {len(devices)} (conftest.py)"
    return devices[:n]


def tolerance(dtype, cpu: tuple[float, float] | None = None, *, scale: float = 1.0) -> dict:
    """``rtol``/``atol`` for comparing two compilations of one computation in ``dtype``.

    On CPU, the figures the tests have always used (``cpu``, or 1e-5 for float32 and 1e-12 for
    float64): XLA:CPU's jit and eager agree to them. On GPU and TPU, fusion reorders reductions
    and picks other kernels, so the bound is at least a few hundred units in the last place,
    times ``scale``: how much the computation amplifies a rounding error (|x| / sqrt(eps) for a
    norm of constant rows).
    """
    eps = float(np.finfo(dtype).eps)
    rtol, atol = cpu or ((1e-5, 1e-5) if eps > 1e-10 else (1e-12, 1e-12))
    if ON_CPU:
        return {"rtol": rtol, "atol": atol}
    return {"rtol": max(rtol, 256 * eps), "atol": max(atol, 256 * eps * max(scale, 1.0))}


# For a subprocess's environment: the same setting as `cheap_compiles`, read by JAX at start.
CHEAP_COMPILES_ENV = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}


@contextlib.contextmanager
def cheap_compiles() -> Iterator[None]:
    """XLA's cheapest compile settings (``jax_disable_most_optimizations``) inside the block.

    For tests that are nearly all compiling and check what runs and what it prints, not speed
    or last-place numerics: their programs compile in a quarter to a third less CPU time. The
    old setting is restored afterwards and the programs so compiled are dropped, so no later
    test reuses them.
    """
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)
        jax.clear_caches()
