"""Test configuration: 64-bit JAX (the seeds' numbers are float64), the examples folder on the path,
eight simulated CPU devices, and hypothesis profiles (``--hypothesis-profile=ci`` is the default; ``thorough`` searches longer)."""

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
from hypothesis import HealthCheck, settings

jax.config.update("jax_enable_x64", True)

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
