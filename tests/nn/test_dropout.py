import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcgrad import errors, nn


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_rate_outside_unit_interval_is_refused(rate):
    with pytest.raises(errors.ConfigError, match=r"Dropout: rate must be in \[0, 1\)"):
        nn.Dropout(rate)


def test_drops_about_rate_and_rescales():
    y = nn.Dropout(0.3).apply({}, jnp.ones((100_000,)), key=jax.random.key(0))
    assert float(jnp.mean(y == 0)) == pytest.approx(0.3, abs=0.01)
    assert float(jnp.mean(y)) == pytest.approx(1.0, abs=0.01)


def test_identity_without_key():
    x = jnp.arange(5.0)
    np.testing.assert_array_equal(nn.Dropout(0.5).apply({}, x), x)


def test_training_mode_without_key_is_an_error():
    with pytest.raises(errors.ConfigError, match="needs a PRNG key"):
        nn.Dropout(0.5).apply({}, jnp.ones(3), train=True)


def test_each_layer_draws_its_own_mask_from_one_key():
    model = nn.serial(nn.Dropout(0.5), nn.Dropout(0.5, name="second"))
    x = jnp.ones((1000,))
    first = nn.serial(nn.Dropout(0.5)).apply({}, x, key=jax.random.key(0))
    both = model.apply({}, x, key=jax.random.key(0))
    again = model.apply({}, x, key=jax.random.key(0))
    np.testing.assert_array_equal(both, again)
    assert not np.array_equal(both, first * 2 * (first != 0))


def test_wrong_key_kind_is_refused():
    with pytest.raises(TypeError, match="PRNG key"):
        nn.Dropout(0.5).apply({}, jnp.ones(3), key=jnp.zeros((3,)))
