import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcgrad import errors, nn


def test_dense_is_x_at_w_plus_b():
    x = jnp.arange(6.0).reshape(2, 3)
    params = {"w": jnp.ones((3, 2)) * jnp.array([1.0, 2.0]), "b": jnp.array([0.5, -1.0])}
    np.testing.assert_allclose(nn.Dense(2).apply(params, x), x @ params["w"] + params["b"])


def test_dense_default_init_is_lecun_normal():
    params = nn.Dense(256).init(jax.random.key(0), jnp.zeros((1, 400)))
    assert float(jnp.var(params["w"])) == pytest.approx(1 / 400, rel=0.1)
    assert not jnp.any(params["b"])


def test_dense_made_for_784_features_refuses_100():
    model = nn.serial(nn.Dense(64))
    params = model.init(jax.random.key(0), jnp.zeros((1, 784)))
    with pytest.raises(errors.ParamsError, match=r"Dense at dense_0: .*\(100, 64\).*\(784, 64\)"):
        model.apply(params, jnp.zeros((8, 100)))


def test_dense_refuses_integer_input():
    with pytest.raises(errors.DTypeError, match="Dense"):
        nn.Dense(2).init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))


def test_scale_multiplies_per_feature():
    params = {"factor": jnp.array([2.0, 3.0])}
    np.testing.assert_allclose(nn.Scale().apply(params, jnp.ones((2, 2))), [[2, 3], [2, 3]])


def test_scale_shape_must_broadcast():
    with pytest.raises(errors.ShapeError, match="Scale"):
        nn.Scale(shape=(3,)).init(jax.random.key(0), jnp.zeros((2, 4)))
