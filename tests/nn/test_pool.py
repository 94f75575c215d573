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


def test_adaptive_pools_use_torch_bins():
    # Length 5 into 3 bins: [0, 2), [1, 4), [3, 5).
    x = jnp.array([1.0, 4.0, 2.0, 8.0, 5.0]).reshape(1, 5, 1)
    np.testing.assert_allclose(nn.adaptive_avg_pool(3)(x)[0, :, 0], [2.5, 14 / 3, 6.5])
    np.testing.assert_array_equal(nn.adaptive_max_pool(3)(x)[0, :, 0], [4.0, 8.0, 8.0])


def test_adaptive_pool_to_one_is_global_and_none_keeps_an_axis():
    x = jnp.arange(24.0).reshape(1, 4, 3, 2)
    np.testing.assert_allclose(nn.adaptive_avg_pool((1, 1))(x)[0, 0, 0], x.mean((0, 1, 2)))
    np.testing.assert_array_equal(nn.adaptive_max_pool((2, None))(x).shape, (1, 2, 3, 2))
    np.testing.assert_array_equal(nn.adaptive_max_pool((2, None))(x)[0, 0], x[0, 1])


def test_adaptive_pool_bad_settings_and_inputs():
    with pytest.raises(errors.ConfigError, match="adaptive_avg_pool: output_size"):
        nn.adaptive_avg_pool((2, 0))
    with pytest.raises(errors.ShapeError, match="adaptive_max_pool"):
        nn.adaptive_max_pool((2, 2))(jnp.zeros((1, 4, 2)))
