import jax.numpy as jnp
import pytest

from funcgrad import errors, nn


def test_flatten_keeps_batch():
    assert nn.Flatten()(jnp.zeros((2, 3, 4, 5))).shape == (2, 60)


def test_reshape_rejects_impossible_shape():
    with pytest.raises(errors.ShapeError, match=r"Reshape.*\(5,\).*\(2, -1\)"):
        nn.Reshape((2, -1))(jnp.zeros((3, 5)))
