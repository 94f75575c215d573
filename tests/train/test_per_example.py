import jax
import jax.numpy as jnp
import numpy as np
import optax

import funcgrad as fg
from funcgrad import losses, nn


def setup():
    model = nn.serial(nn.Dense(4), nn.relu, nn.Dense(2))
    x = jax.random.normal(jax.random.key(0), (6, 3))
    y = jnp.arange(6) % 2
    params = model.init(jax.random.key(1), x)
    return (
        model,
        params,
        (x, y),
        lambda p, b: losses.softmax_cross_entropy(model.apply(p, b[0]), b[1]),
    )


def test_per_example_grads_equal_a_python_loop():
    _, params, (x, y), loss_fn = setup()
    grads = fg.train.per_example_grads(loss_fn)(params, (x, y))
    for i in range(6):
        single = jax.grad(loss_fn)(params, (x[i : i + 1], y[i : i + 1]))
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(single), strict=True):
            np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6)
    mean = jax.tree.map(lambda g: g.mean(0), grads)
    full = jax.grad(loss_fn)(params, (x, y))
    for a, b in zip(jax.tree.leaves(mean), jax.tree.leaves(full), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_clipping_bounds_each_example_norm():
    _, params, batch, loss_fn = setup()
    raw = fg.train.per_example_grads(loss_fn)(params, batch)
    clipped = fg.train.per_example_grads(loss_fn, clip_norm=0.1)(params, batch)
    norms = fg.train.global_norms(clipped)
    assert bool(jnp.all(norms <= 0.1 + 1e-6))
    raw_norms = fg.train.global_norms(raw)
    np.testing.assert_allclose(norms, jnp.minimum(raw_norms, 0.1), rtol=1e-5)


def test_dp_sgd_step_with_optax_aggregate():
    _, params, batch, loss_fn = setup()
    dp = optax.contrib.differentially_private_aggregate(
        l2_norm_clip=1.0, noise_multiplier=0.0, key=0
    )
    grads = fg.train.per_example_grads(loss_fn)(params, batch)
    updates, _ = dp.update(grads, dp.init(params), params)
    clipped = fg.train.per_example_grads(loss_fn, clip_norm=1.0)(params, batch)
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(clipped), strict=True):
        np.testing.assert_allclose(a, b.mean(0), rtol=1e-5, atol=1e-7)
