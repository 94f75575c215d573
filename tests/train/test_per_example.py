import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

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
    grads = jax.jit(fg.train.per_example_grads(loss_fn))(params, (x, y))  # one program
    grad = jax.jit(jax.grad(loss_fn))  # compiled once for the six one-example batches
    # Sliced in NumPy: slicing a JAX array eagerly compiles a program for every index.
    x_np, y_np, grads_np = np.asarray(x), np.asarray(y), jax.tree.map(np.asarray, grads)
    for i in range(6):
        single = grad(params, (x_np[i : i + 1], y_np[i : i + 1]))
        for a, b in zip(jax.tree.leaves(grads_np), jax.tree.leaves(single), strict=True):
            np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6)
    mean = jax.tree.map(lambda g: g.mean(0), grads_np)
    full = grad(params, (x, y))
    for a, b in zip(jax.tree.leaves(mean), jax.tree.leaves(full), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_clipping_bounds_each_example_norm():
    _, params, batch, loss_fn = setup()
    # Jitted: one program each, not one compile per eager op.
    raw = jax.jit(fg.train.per_example_grads(loss_fn))(params, batch)
    clipped = jax.jit(fg.train.per_example_grads(loss_fn, clip_norm=0.1))(params, batch)
    norms = fg.train.global_norms(clipped)
    assert bool(jnp.all(norms <= 0.1 + 1e-6))
    raw_norms = fg.train.global_norms(raw)
    np.testing.assert_allclose(norms, jnp.minimum(raw_norms, 0.1), rtol=1e-5)


def test_dp_sgd_step_with_optax_aggregate():
    _, params, batch, loss_fn = setup()
    dp = optax.contrib.differentially_private_aggregate(
        l2_norm_clip=1.0, noise_multiplier=0.0, key=0
    )
    # Jitted: one program each, not one compile per eager op.
    grads = jax.jit(fg.train.per_example_grads(loss_fn))(params, batch)
    updates, _ = dp.update(grads, dp.init(params), params)
    clipped = jax.jit(fg.train.per_example_grads(loss_fn, clip_norm=1.0))(params, batch)
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(clipped), strict=True):
        np.testing.assert_allclose(a, b.mean(0), rtol=1e-5, atol=1e-7)


def dropout_setup():
    # One Dropout before a linear read-out: an example's gradient w.r.t. the read-out weights is
    # its input times its dropout mask (scaled), so a zero marks a dropped unit.
    model = nn.serial(nn.Dropout(0.5), nn.Dense(1, use_bias=False))
    x = jnp.ones((16, 32))
    params = model.init(jax.random.key(0), x)
    loss = lambda p, b, key: jnp.sum(model.apply(p, b, key=key))
    return params, x, loss


def masks(grads):
    return np.asarray(grads["dense_1"]["w"][..., 0] != 0)


def test_each_example_draws_its_own_dropout_mask():
    # Before: every example got the same mask (the key was broadcast over the batch).
    params, x, loss = dropout_setup()
    key = jax.random.key(3)
    for grads in (
        fg.train.per_example_grads(loss, with_key=True)(params, x, key=key),
        fg.train.per_example_grads(loss)(params, x, key),  # a typed key among the arguments
    ):
        m = masks(grads)
        assert 0.2 < m.mean() < 0.8  # dropout is on
        assert len({row.tobytes() for row in m}) == 16  # sixteen different masks
        for i in (0, 7, 15):  # example i used fold_in(key, i)
            alone = jax.grad(loss)(params, x[i : i + 1], jax.random.fold_in(key, i))
            np.testing.assert_array_equal(m[i], masks(alone))


def test_a_key_without_with_key_is_deprecated():
    params, x, loss = dropout_setup()
    with pytest.deprecated_call(match="with_key=True"):
        fg.train.per_example_grads(loss)(params, x, key=jax.random.key(0))
