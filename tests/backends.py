"""What the tests need to know about the backend they run on: which devices make a mesh, and how
closely one computation compiled two ways (jit and eager, vmap and a batch) agrees there."""

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
