"""Defects of JAX's default 32-bit mode that the suite's old global float64 hid (each failed before its fix)."""

import jax
import jax.numpy as jnp
import numpy as np

from funcgrad import nn


def test_a_numpy_float64_example_input_is_a_float32_spec():
    """NumPy arrays are float64 by default; init took their dtype as it came, so `repeat` saw a
    float64 input, a float32 output, and refused to scan. The spec now has the dtype apply sees."""
    model = nn.repeat(nn.serial(nn.Dense(4), nn.tanh), 3)
    for example in (np.ones((3, 4)), jax.ShapeDtypeStruct((3, 4), np.float64)):
        params = model.init(jax.random.key(0), example)
        assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
        assert model.apply(params, np.ones((3, 4))).dtype == jnp.float32
