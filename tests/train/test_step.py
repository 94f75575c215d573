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
    step = fg.train.make_step(loss_fn, opt)
    new_params, _, metrics = step.arrays(params, opt.init(params), batch)
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
    state = fg.train.TrainState.create(params, opt, key=jax.random.key(0))
    first = None
    for _ in range(100):
        state, metrics = step(state, batch)
        first = first if first is not None else float(metrics["loss"])
    assert float(metrics["loss"]) < 0.1 * first


def test_aux_metrics_and_dropout_key():
    model = nn.serial(nn.Dense(8), nn.Dropout(0.5), nn.Dense(1))
    x, y = jnp.ones((4, 3)), jnp.ones((4, 1))
    params = model.init(jax.random.key(0), x)

    def loss_fn(p, b, *, key):
        out = model.apply(p, b[0], key=key)
        return losses.mse(out, b[1]), {"mean_output": out.mean()}

    opt = optax.sgd(0.1)
    step = fg.train.make_step(loss_fn, opt, has_aux=True, with_key=True)
    a = step.arrays(params, opt.init(params), (x, y), jax.random.key(1))[2]
    b = step.arrays(params, opt.init(params), (x, y), jax.random.key(1))[2]
    c = step.arrays(params, opt.init(params), (x, y), jax.random.key(2))[2]
    assert set(a) == {"loss", "mean_output"}
    assert float(a["loss"]) == float(b["loss"]) != float(c["loss"])


def test_non_scalar_loss_is_refused():
    opt = optax.sgd(0.1)
    step = fg.train.make_step(lambda p, b: p * b, opt)
    with pytest.raises(errors.ShapeError, match=r"scalar loss.*shape \(3,\)"):
        step.arrays(jnp.ones(3), opt.init(jnp.ones(3)), jnp.ones(3))


def test_a_parameter_with_a_default_never_receives_the_key():
    seen = {}

    def loss_fn(w, batch, reg=0.01):
        seen["reg"] = reg
        return jnp.mean((batch * w) ** 2) + reg * w**2

    opt = optax.sgd(0.1)
    state = fg.train.TrainState.create(jnp.ones(()), opt, key=jax.random.key(0))
    fg.train.make_step(loss_fn, opt)(state, jnp.ones(4))
    assert seen["reg"] == 0.01  # was the step's PRNG key


def test_with_key_passes_the_key_by_keyword_and_checks_the_loss_takes_it():
    keys = []

    def loss_fn(w, batch, reg=0.01, *, key):
        keys.append(key)
        return jnp.mean((batch * w) ** 2) + reg * w**2

    opt = optax.sgd(0.1)
    state = fg.train.TrainState.create(jnp.ones(()), opt, key=jax.random.key(0))
    fg.train.make_step(loss_fn, opt, with_key=True)(state, jnp.ones(4))
    assert len(keys) == 1
    with pytest.raises(errors.ConfigError, match="no parameter named key"):
        fg.train.make_step(lambda w, b, rng: jnp.sum(w * b), opt, with_key=True)
    with pytest.raises(TypeError):  # with_key=False: the loss gets no key
        fg.train.make_step(loss_fn, opt, with_key=False)(state, jnp.ones(4))


def test_the_old_key_inference_still_works_with_a_deprecation_warning():
    def loss_fn(w, batch, rng):
        return jnp.mean((batch * w) ** 2) + 0 * jax.random.normal(rng)

    opt = optax.sgd(0.1)
    with pytest.deprecated_call(match="with_key=True"):
        step = fg.train.make_step(loss_fn, opt)
    state = fg.train.TrainState.create(jnp.ones(()), opt, key=jax.random.key(0))
    state, _ = step(state, jnp.ones(4))
    with pytest.deprecated_call(match="with_key=True"):
        fg.train.make_multistep(loss_fn, opt, 2)
    with pytest.deprecated_call(match="with_key=True"):
        fg.train.make_update(loss_fn, opt)


def test_the_array_call_is_deprecated_and_names_the_adapter():
    opt = optax.sgd(0.1)
    step = fg.train.make_step(lambda w, b: jnp.mean((b * w) ** 2), opt)
    with pytest.deprecated_call(match=r"step\.arrays\(params, opt_state, batch, key\)"):
        w, _, _ = step(jnp.ones(()), opt.init(jnp.ones(())), jnp.ones(4))
    assert float(w) < 1.0
