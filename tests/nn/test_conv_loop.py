"""Convolutions traced in a loop body take their kernel gradient in a loop-friendly form: same numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcgrad as fg
from funcgrad import losses, nn
from funcgrad.nn.loops import loop_body


@pytest.mark.parametrize(
    "shape, kernel, strides, padding",
    [
        ((2, 9, 9, 3), (3, 3), 1, "SAME"),
        ((2, 9, 9, 3), (3, 3), 2, "SAME"),
        ((2, 10, 7, 3), (2, 3), (2, 1), "VALID"),
        ((2, 8, 8, 2), (3, 3), 3, ((1, 2), (0, 1))),
        ((2, 11, 3), (4,), 2, "SAME"),
        ((1, 5, 6, 7, 2), (2, 3, 2), 1, "VALID"),
    ],
)
def test_loop_form_gives_the_same_gradients(shape, kernel, strides, padding):
    layer = nn.Conv(4, kernel, strides=strides, padding=padding, param_dtype=jnp.float64)
    x = jax.random.normal(jax.random.key(0), shape)
    params = layer.init(jax.random.key(1), x)
    loss = lambda p, v: jnp.sum(jnp.sin(layer.apply(p, v)))
    plain = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)  # one program, not op by op

    def looped(p, v):
        with loop_body():
            return loss(p, v)

    in_loop = jax.jit(jax.grad(looped, argnums=(0, 1)))(params, x)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(in_loop), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    fg.testing.check_grads(looped, (params, x), order=1, modes=("rev",))


def test_a_fused_cnn_equals_its_single_steps():
    model = nn.serial(nn.Conv(4, (3, 3), strides=2, param_dtype=jnp.float64), nn.relu, nn.Flatten(),
                      nn.Dense(3, param_dtype=jnp.float64))  # fmt: skip
    x = jax.random.normal(jax.random.key(0), (3, 4, 8, 8, 1))
    y = jnp.array([[0, 1, 2, 1]] * 3).T.reshape(3, 4)
    params = model.init(jax.random.key(1), x[0])
    loss = lambda p, b: losses.softmax_cross_entropy(model.apply(p, b[0]), b[1])
    opt = optax.adam(1e-2)
    step = fg.train.make_step(loss, opt, donate=False)
    p, o = params, opt.init(params)
    for i in range(3):
        p, o, _ = step(p, o, (x[i], y[i]))
    fused, _, _ = fg.train.make_multistep(loss, opt, 3, donate=False)(
        params, opt.init(params), (x, y)
    )
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(fused), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10)
