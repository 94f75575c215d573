import jax.numpy as jnp
import numpy as np
import pytest

from funcgrad import errors, nn


def test_max_pool_takes_window_maxima():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(nn.max_pool((2, 2))(x)[0, :, :, 0], [[5, 7], [13, 15]])


def test_avg_pool_excluding_padding_averages_real_entries():
    x = jnp.ones((1, 3, 1))
    y_incl = nn.avg_pool((3,), strides=1, padding="SAME")(x)
    y_excl = nn.avg_pool((3,), strides=1, padding="SAME", count_include_pad=False)(x)
    np.testing.assert_allclose(y_incl[0, :, 0], [2 / 3, 1, 2 / 3])
    np.testing.assert_allclose(y_excl[0, :, 0], [1, 1, 1])


def test_pool_wrong_rank():
    with pytest.raises(errors.ShapeError, match="max_pool"):
        nn.max_pool((2, 2))(jnp.zeros((4, 4)))
