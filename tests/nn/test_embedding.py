import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcgrad import errors, nn


def test_embedding_looks_up_rows():
    table = jnp.arange(12.0).reshape(4, 3)
    np.testing.assert_array_equal(
        nn.Embedding(4, 3).apply({"embedding": table}, jnp.array([[3, 0]])),
        table[jnp.array([[3, 0]])],
    )


def test_embedding_gradient_accumulates_repeated_ids():
    table = jnp.zeros((4, 2))
    grads = jax.grad(
        lambda t: nn.Embedding(4, 2).apply({"embedding": t}, jnp.array([1, 1, 2])).sum()
    )(table)
    np.testing.assert_array_equal(grads[:, 0], [0, 2, 1, 0])


def test_embedding_refuses_float_ids():
    with pytest.raises(errors.DTypeError, match="integer ids"):
        nn.Embedding(4, 3).init(jax.random.key(0), jnp.zeros((2,)))
