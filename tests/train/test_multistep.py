import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcgrad as fg
from funcgrad import losses, nn


def setup():
    model = nn.serial(nn.Dense(16), nn.Dropout(0.2), nn.tanh, nn.Dense(1))
    x = jax.random.normal(jax.random.key(0), (5, 8, 3))
    y = jnp.sum(x, -1, keepdims=True)
    params = model.init(jax.random.key(1), x[0])

    def loss_fn(p, b, *, key):
        return losses.mse(model.apply(p, b[0], key=key), b[1]), {"max": jnp.max(b[1])}

    return loss_fn, params, (x, y)


def test_multistep_equals_k_single_steps():
    loss_fn, params, blocks = setup()
    opt = optax.adam(1e-2)
    keys = jax.random.split(jax.random.key(2), 5)
    step = fg.train.make_step(loss_fn, opt, has_aux=True, with_key=True)
    p, o = params, opt.init(params)
    single_losses = []
    for i in range(5):
        p, o, m = step.arrays(p, o, (blocks[0][i], blocks[1][i]), keys[i])
        single_losses.append(float(m["loss"]))
    multi = fg.train.make_multistep(loss_fn, opt, 5, has_aux=True, with_key=True)
    q, _, metrics = multi.arrays(params, opt.init(params), blocks, keys)
    np.testing.assert_allclose(metrics["loss"], single_losses, rtol=1e-6)
    assert metrics["max"].shape == (5,)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_batch_norm_state_threads_through_steps():
    model = nn.serial(nn.Dense(4), nn.BatchNorm(), nn.Dense(1))
    x = jax.random.normal(jax.random.key(0), (16, 3)) + 2
    params, state = model.init_with_state(jax.random.key(1), x)

    def loss_fn(p, s, b):
        y, s = model.apply(p, b, state=s, train=True)
        return jnp.mean(y**2), s

    opt = optax.sgd(0.01)
    step = fg.train.make_step(loss_fn, opt, has_state=True)
    p, s, o, _ = step.arrays(params, state, opt.init(params), x)
    after_one = np.asarray(s["batch_norm_1"]["mean"])
    assert not np.allclose(after_one, 0)
    multi = fg.train.make_multistep(loss_fn, opt, 3, has_state=True)
    _, s3, _, m = multi.arrays(p, s, o, jnp.stack([x, x, x]))
    assert m["loss"].shape == (3,)
    assert not np.allclose(s3["batch_norm_1"]["mean"], after_one)


def test_new_batch_shape_recompiles_with_a_warning():
    opt = optax.sgd(0.1)
    step = fg.train.make_step(lambda w, b: jnp.mean(b * w), opt)
    w = jnp.ones(())
    step.arrays(w, opt.init(w), jnp.ones(4))
    with pytest.warns(UserWarning, match="recompiling for batches of new shapes"):
        step.arrays(w, opt.init(w), jnp.ones(5))
