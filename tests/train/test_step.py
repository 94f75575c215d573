import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcgrad as fg
from funcgrad import errors, losses, nn


def problem():
    model = nn.serial(nn.Dense(8), nn.tanh, nn.Dense(1))
    x = jax.random.normal(jax.random.key(0), (32, 3))
    y = jnp.sum(x, axis=1, keepdims=True)
    params = model.init(jax.random.key(1), x)
    return model, params, (x, y)


def test_step_equals_a_hand_written_update():
    model, params, batch = problem()

    def loss_fn(p, b):
        return losses.mse(model.apply(p, b[0]), b[1])

    opt = optax.adam(1e-2)
    step = fg.train.make_step(loss_fn, opt, donate=False)
    new_params, _, metrics = step(params, opt.init(params), batch)
    grads = jax.grad(loss_fn)(params, batch)
    updates, _ = opt.update(grads, opt.init(params), params)
    expected = optax.apply_updates(params, updates)
    assert float(metrics["loss"]) == pytest.approx(float(loss_fn(params, batch)), rel=1e-6)
    for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_training_lowers_the_loss():
    model, params, batch = problem()
    opt = optax.adam(1e-2)
    step = fg.train.make_step(lambda p, b: losses.mse(model.apply(p, b[0]), b[1]), opt)
    state = opt.init(params)
    first = None
    for _ in range(100):
        params, state, metrics = step(params, state, batch)
        first = first if first is not None else float(metrics["loss"])
    assert float(metrics["loss"]) < 0.1 * first


def test_aux_metrics_and_dropout_key():
    model = nn.serial(nn.Dense(8), nn.Dropout(0.5), nn.Dense(1))
    x, y = jnp.ones((4, 3)), jnp.ones((4, 1))
    params = model.init(jax.random.key(0), x)

    def loss_fn(p, b, key):
        out = model.apply(p, b[0], key=key)
        return losses.mse(out, b[1]), {"mean_output": out.mean()}

    opt = optax.sgd(0.1)
    step = fg.train.make_step(loss_fn, opt, has_aux=True, donate=False)
    a = step(params, opt.init(params), (x, y), jax.random.key(1))[2]
    b = step(params, opt.init(params), (x, y), jax.random.key(1))[2]
    c = step(params, opt.init(params), (x, y), jax.random.key(2))[2]
    assert set(a) == {"loss", "mean_output"}
    assert float(a["loss"]) == float(b["loss"]) != float(c["loss"])


def test_non_scalar_loss_is_refused():
    opt = optax.sgd(0.1)
    step = fg.train.make_step(lambda p, b: p * b, opt)
    with pytest.raises(errors.ShapeError, match=r"scalar loss.*shape \(3,\)"):
        step(jnp.ones(3), opt.init(jnp.ones(3)), jnp.ones(3))
