import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcgrad as fg
from funcgrad import errors, inspect, nn

MODEL = nn.serial(nn.Dense(32), nn.tanh, nn.Dense(32), nn.tanh, nn.Dense(1))


def loss_fn(params, batch):
    x, y = batch
    return jnp.mean((MODEL.apply(params, x) - y) ** 2)


def batch(n=64, d=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x, np.sin(x[:, :1])


def params(d=8):
    return MODEL.init(jax.random.key(0), jnp.zeros((1, d)))


def test_four_microbatches_give_the_full_batch_step():
    opt = optax.adam(1e-2)
    results = []
    for k in (1, 4):
        step = fg.train.make_step(loss_fn, opt, microbatches=k)
        state = fg.train.TrainState.create(params(), opt, key=jax.random.key(0))
        for seed in range(2):
            state, metrics = step(state, batch(seed=seed))
        results.append((state.params, metrics["loss"]))
    (full, full_loss), (parts, parts_loss) = results
    np.testing.assert_allclose(parts_loss, full_loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(parts), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(full["dense_0"]["w"], params()["dense_0"]["w"])


def test_aux_metrics_are_averaged_and_each_microbatch_gets_its_own_key():
    def noisy(w, b, *, key):  # aux: the batch mean and a draw of the part's key
        return jnp.mean((b * w) ** 2), {"mean": jnp.mean(b), "draw": jax.random.uniform(key)}

    opt = optax.sgd(0.1)
    step = fg.train.make_step(noisy, opt, has_aux=True, with_key=True, microbatches=4)
    x, key = jnp.arange(8.0), jax.random.key(3)
    _, _, metrics = step.arrays(jnp.ones(()), opt.init(jnp.ones(())), x, key=key)
    draws = [jax.random.uniform(jax.random.fold_in(key, i)) for i in range(4)]
    np.testing.assert_allclose(metrics["mean"], 3.5, rtol=1e-6)
    np.testing.assert_allclose(metrics["draw"], np.mean(draws), rtol=1e-6)
    np.testing.assert_allclose(metrics["loss"], np.mean(np.arange(8.0) ** 2), rtol=1e-6)


def test_microbatches_cut_the_peak_temporary_memory():
    # Activations dominate: a batch of 2048 through 512-wide layers, ~0.3M parameters.
    d, n = 16, 2048
    model = nn.serial(nn.Dense(512), nn.tanh, nn.Dense(512), nn.tanh, nn.Dense(1))
    p = model.init(jax.random.key(0), jnp.zeros((1, d)))
    loss = lambda p, b: jnp.mean((model.apply(p, b[0]) - b[1]) ** 2)
    opt = optax.adam(1e-3)
    state = fg.train.TrainState.create(p, opt, key=jax.random.key(0))
    shapes = (jax.ShapeDtypeStruct((n, d), jnp.float32), jax.ShapeDtypeStruct((n, 1), jnp.float32))
    temp = {}
    for k in (1, 4):
        step = fg.train.make_step(loss, opt, microbatches=k)
        temp[k] = inspect.cost(step, state, shapes).temp_bytes
    if temp[1] is None:
        pytest.skip("this backend reports no memory analysis")
    print(f"temporary bytes: k=1 {temp[1]}, k=4 {temp[4]} ({temp[4] / temp[1]:.2f}x)")
    assert temp[4] <= 0.5 * temp[1]


def test_a_batch_that_does_not_split_evenly_is_refused():
    opt = optax.sgd(0.1)
    state = fg.train.TrainState.create(params(), opt, key=jax.random.key(0))
    step = fg.train.make_step(loss_fn, opt, microbatches=4)
    with pytest.raises(errors.ShapeError, match=r"microbatches=4.*batch of 30 rows"):
        step(state, batch(30))
    with pytest.raises(errors.ConfigError, match="positive int"):
        fg.train.make_step(loss_fn, opt, microbatches=0)
    with pytest.raises(errors.ConfigError, match="batch_size=30"):
        fg.train.fit(loss_fn, opt, params(), batch(64), key=jax.random.key(0), batch_size=30,
                     steps=1, microbatches=4, hooks=[])  # fmt: skip


def test_fit_with_microbatches_and_fused_steps_equals_the_plain_run():
    run = lambda **kw: fg.train.fit(
        loss_fn, optax.adam(1e-2), params(), batch(128), key=jax.random.key(1), batch_size=32,
        steps=4, hooks=[], **kw,
    )  # fmt: skip
    plain, accumulated = run(), run(microbatches=2, fused=2)
    for a, b in zip(
        jax.tree.leaves(plain.params), jax.tree.leaves(accumulated.params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_nan_guard_sees_a_nan_in_any_microbatch():
    opt = fg.train.nan_guard(optax.sgd(0.1))
    step = fg.train.make_step(loss_fn, opt, microbatches=4)
    state = fg.train.TrainState.create(params(), opt, key=jax.random.key(0))
    x, y = batch()
    x[5, 0] = np.nan  # in the second microbatch (rows 1, 5, 9, ...)
    state, _ = step(state, (x, y))
    assert int(fg.train.nonfinite_step(state.opt_state)) == 0
    for a, b in zip(jax.tree.leaves(params()), jax.tree.leaves(state.params), strict=True):
        assert np.array_equal(a, b)
