import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcgrad import nn

REFERENCE = {
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "softplus": jax.nn.softplus,
    "softmax": jax.nn.softmax,
    "log_softmax": jax.nn.log_softmax,
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_activation_is_a_function_and_a_layer(name):
    x = jnp.linspace(-4, 4, 12).reshape(3, 4)
    act = getattr(nn, name)
    np.testing.assert_allclose(act(x), REFERENCE[name](x), rtol=1e-12, atol=1e-15)
    model = nn.serial(nn.Dense(4), act)
    params = model.init(jax.random.key(0), x)
    assert sorted(params) == ["dense_0"]


def test_elementwise_makes_new_activations():
    swish = nn.elementwise(lambda x: x * jax.nn.sigmoid(x), "swish")
    assert repr(swish) == "nn.swish"
    np.testing.assert_allclose(swish(jnp.array([1.0])), [jax.nn.sigmoid(1.0)])
