import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcgrad as fg
from funcgrad import errors, inspect, losses, nn

MODEL = nn.serial(nn.Dense(16), nn.relu, nn.Dense(3))
HEAD = lambda path: path.startswith("dense_2")
HEAD_TREE = {"dense_0": False, "dense_2": {"w": True, "b": True}}  # a bool may cover a subtree


def data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5)


def loss_fn(params, batch):
    x, y = batch
    return losses.softmax_cross_entropy(MODEL.apply(params, x), y)


def init():
    return MODEL.init(jax.random.key(0), jnp.zeros((1, 4), jnp.float32))


def train(trainable, steps=3, opt=None):
    opt = opt or optax.adam(1e-2)
    step = fg.train.make_step(loss_fn, opt, trainable=trainable)
    state = fg.train.TrainState.create(init(), opt, key=jax.random.key(0), trainable=trainable)
    for _ in range(steps):
        state, _ = step(state, data())
    return state


def test_frozen_leaves_stay_bitwise_and_trainable_ones_match_a_hand_step():
    params, state = init(), train(HEAD)
    body, trained_body = params["dense_0"], state.params["dense_0"]
    for a, b in zip(jax.tree.leaves(body), jax.tree.leaves(trained_body), strict=True):
        assert np.array_equal(a, b)
    # By hand: differentiate the head alone, the body closed over.
    opt = optax.adam(1e-2)
    head, opt_state = params["dense_2"], opt.init(params["dense_2"])

    @jax.jit
    def hand_step(head, opt_state, batch):
        grads = jax.grad(lambda h: loss_fn({**params, "dense_2": h}, batch))(head)
        updates, opt_state = opt.update(grads, opt_state, head)
        return optax.apply_updates(head, updates), opt_state

    for _ in range(3):
        head, opt_state = hand_step(head, opt_state, data())
    for a, b in zip(jax.tree.leaves(head), jax.tree.leaves(state.params["dense_2"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not np.allclose(head["w"], params["dense_2"]["w"])  # the head did train


def test_optimizer_state_holds_only_the_trainable_leaves():
    # adam: a step count, then mu and nu for each trained leaf (4 in all, 2 in the head)
    assert len(jax.tree.leaves(train(None, steps=0).opt_state)) == 1 + 2 * 4
    assert len(jax.tree.leaves(train(HEAD, steps=0).opt_state)) == 1 + 2 * 2


def test_a_predicate_and_a_tree_of_bools_agree():
    by_predicate, by_tree = train(HEAD), train(HEAD_TREE)
    for a, b in zip(jax.tree.leaves(by_predicate), jax.tree.leaves(by_tree), strict=True):
        assert np.array_equal(a, b)


def test_bad_trainable_arguments_say_what_is_wrong():
    opt = optax.sgd(0.1)
    with pytest.raises(errors.ParamsError, match="dense_2.b"):
        fg.train.split_trainable(init(), {"dense_0": True, "dense_2": {"w": True}})
    with pytest.raises(errors.ParamsError, match="dense_9"):
        fg.train.split_trainable(init(), {**HEAD_TREE, "dense_9": True})
    with pytest.raises(errors.ConfigError, match="selects none"):
        fg.train.TrainState.create(init(), opt, key=jax.random.key(0), trainable=lambda p: False)
    with pytest.raises(errors.InputTypeError, match="predicate"):
        fg.train.make_step(loss_fn, opt, trainable="dense_2")
    # A state whose optimizer state was made for every leaf, for a step that trains some.
    step = fg.train.make_step(loss_fn, optax.adam(1e-2), trainable=HEAD)
    state = fg.train.TrainState.create(init(), optax.adam(1e-2), key=jax.random.key(0))
    with pytest.raises(errors.ConfigError, match="trainable="):
        step(state, data())


def test_no_gradient_is_computed_for_a_frozen_layer():
    model = nn.serial(nn.Dense(256), nn.relu, nn.Dense(1))
    params = model.init(jax.random.key(0), jnp.zeros((1, 256)))
    batch = jnp.ones((64, 256))
    loss = lambda p, x: jnp.mean(model.apply(p, x) ** 2)
    opt = optax.sgd(0.1)

    def flops(trainable):
        step = fg.train.make_step(loss, opt, trainable=trainable, donate=False)
        state = fg.train.TrainState.create(params, opt, key=jax.random.key(0), trainable=trainable)
        return inspect.cost(step, state, batch).flops

    everything, head_only = flops(None), flops(lambda p: p.startswith("dense_2"))
    # At least the big layer's kernel gradient (x^T @ dy: 2 * 64 * 256 * 256 flops) is gone.
    assert everything - head_only >= 2 * 64 * 256 * 256


def test_a_resumed_fit_that_trains_some_leaves_equals_an_uninterrupted_one(tmp_path):
    def run(*hooks, steps):
        return fg.train.fit(
            loss_fn, optax.adam(1e-2), init(), data(96), key=jax.random.key(1), batch_size=16,
            steps=steps, hooks=list(hooks), trainable=HEAD,
        )  # fmt: skip

    straight = run(steps=20)
    run(fg.train.Checkpoint(tmp_path, 10), steps=10)
    resumed = run(fg.train.Checkpoint(tmp_path, 10), steps=20)
    assert resumed.step == 20
    for a, b in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state), strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(resumed.params["dense_0"]["w"], init()["dense_0"]["w"])
    with np.load(tmp_path / "ckpt_000000020.npz") as saved:  # the head's optimizer state only
        assert sorted(k for k in saved.files if k.startswith("opt_state.")) == [
            "opt_state.0.count", "opt_state.0.mu.dense_2.b", "opt_state.0.mu.dense_2.w",
            "opt_state.0.nu.dense_2.b", "opt_state.0.nu.dense_2.w",
        ]  # fmt: skip
