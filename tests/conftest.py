"""Test configuration: JAX's default 32-bit mode (the mode users run; a test that needs float64 asks
for the ``x64`` fixture), the examples folder on the path, eight simulated CPU devices, and hypothesis
profiles (``--hypothesis-profile=ci`` is the default; ``thorough`` searches longer)."""

import os
import sys
from pathlib import Path

# Eight simulated CPU devices, so the sharded-training tests run on a mesh; one device's tests are
# unaffected (arrays land on device 0). Set before JAX starts its CPU backend. On a GPU or TPU
# machine the default backend is the accelerator; tests that need the 8 devices ask for them by
# jax.devices("cpu") (tests/backends.py), so the same suite runs there.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

# JAX's persistent compilation cache in .jax_cache/ (gitignored), shared by the pytest workers and
# the scripts the tests start (through the environment): a program compiled once is read back by
# every other process that compiles it, and a second run of the suite starts warm.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".jax_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax
import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "tests"))  # tests/backends.py: devices and tolerances per backend

# CI replays the same examples every run (derandomize), so a red CI is always reproducible;
# the thorough profile searches afresh each time.
settings.register_profile(
    "ci",
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "x64: run in JAX's 64-bit mode (float64 finite differences, the seeds' numbers, PyTorch "
        "cross-checks); on a test, a class, a module (pytestmark) or a parametrize value (pytest.param)",
    )


@pytest.fixture(autouse=True)
def _x64_mode(request):
    """The suite runs in JAX's default 32-bit mode, as users do; ``@pytest.mark.x64`` turns 64-bit
    mode on for one test (a mark, not a fixture, so that ``pytest.param(jnp.float64,
    marks=pytest.mark.x64)`` can carry it) and restores the mode after it. Arrays made at import
    time are 32-bit: a float64 test makes its arrays inside the test (or keeps NumPy constants).

    Every test must also start and end in 32-bit mode: a test (or an import at collection) that
    turns ``jax_enable_x64`` on for good would silently run the tests after it in 64-bit mode."""
    if jax.enable_x64.value:
        jax.config.update("jax_enable_x64", False)
        pytest.fail("jax_enable_x64 was on before this test began (turned on at import?)")
    if request.node.get_closest_marker("x64"):
        with jax.enable_x64(True):
            yield
    else:
        yield
    if jax.enable_x64.value:
        jax.config.update("jax_enable_x64", False)
        pytest.fail("this test left jax_enable_x64 on; mark it @pytest.mark.x64 instead")
