"""The parallel tests run on the 8 simulated CPU devices on every machine: meshes name them
(tests/backends.py), and one-device references run on CPU device 0, so both sides of each
comparison run on the same backend (a GPU's float32 matmuls round differently)."""

import jax
import pytest


@pytest.fixture(autouse=True)
def _on_cpu():
    with jax.default_device(jax.devices("cpu")[0]):
        yield
