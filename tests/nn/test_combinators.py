import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcgrad import errors, nn

KEY = jax.random.key(0)


def test_keys_read_like_the_model():
    model = nn.serial(nn.Conv(4, (3, 3)), nn.relu, nn.Flatten(), nn.Dense(10, name="head"))
    params = model.init(KEY, jnp.zeros((1, 8, 8, 1)))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    assert paths == ["['conv_0']['b']", "['conv_0']['w']", "['head']['b']", "['head']['w']"]


def test_duplicate_names_are_refused():
    with pytest.raises(errors.ConfigError, match="'a'"):
        nn.serial(nn.Dense(2, name="a"), nn.Dense(2, name="a"))


def test_missing_and_extra_keys_are_named():
    model = nn.serial(nn.Dense(2), nn.Dense(2))
    params = model.init(KEY, jnp.zeros((1, 3)))
    with pytest.raises(errors.ParamsError, match=r"unexpected parameter key\(s\) \['dense_9'\]"):
        model.apply({**params, "dense_9": {}}, jnp.zeros((1, 3)))
    with pytest.raises(errors.ParamsError, match=r"Dense at dense_1: .*missing \['b', 'w'\]"):
        model.apply({"dense_0": params["dense_0"]}, jnp.zeros((1, 3)))
    broken = {**params, "dense_0": {"w": params["dense_0"]["w"]}}
    with pytest.raises(errors.ParamsError, match=r"Dense at dense_0: .*missing \['b'\]"):
        model.apply(broken, jnp.zeros((1, 3)))


def test_shared_layer_adds_gradients_of_every_use():
    # Seed 7: one W used twice; its gradient is the sum of the two that reach it.
    tied = nn.shared(nn.Dense(3), name="tied")
    model = nn.serial(tied, nn.tanh, tied)
    x = jax.random.normal(KEY, (2, 3), jnp.float64)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), model.init(KEY, x))
    untied = nn.serial(nn.Dense(3), nn.tanh, nn.Dense(3))
    twice = {"dense_0": params["tied"], "dense_2": params["tied"]}
    g_tied = jax.grad(lambda p: model.apply(p, x).sum())(params)["tied"]
    g_untied = jax.grad(lambda p: untied.apply(p, x).sum())(twice)
    for leaf in ("w", "b"):
        np.testing.assert_allclose(
            g_tied[leaf], g_untied["dense_0"][leaf] + g_untied["dense_2"][leaf], rtol=1e-13
        )


def test_repeat_equals_applying_the_slices_in_turn():
    block = nn.serial(nn.Dense(4), nn.tanh)
    deep = nn.repeat(block, 5)
    x = jax.random.normal(KEY, (3, 4), jnp.float64)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), deep.init(KEY, x))
    y = x
    for i in range(5):
        y = block.apply(jax.tree.map(lambda p, i=i: p[i], params), y)
    np.testing.assert_allclose(deep.apply(params, x), y, rtol=1e-13)
    slices = [params["dense_0"]["w"][i] for i in range(5)]
    assert not np.allclose(slices[0], slices[1])


def test_repeat_needs_shape_preserving_layer():
    with pytest.raises(errors.ShapeError, match="repeat"):
        nn.repeat(nn.Dense(3), 2).init(KEY, jnp.zeros((1, 4)))


@pytest.mark.parametrize("remat_repeat", [False, True])
def test_remat_gives_the_same_gradients(remat_repeat):
    plain = nn.serial(nn.Dense(4), nn.gelu, nn.Dense(4))
    x = jax.random.normal(KEY, (3, 4), jnp.float64)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), plain.init(KEY, x))
    if remat_repeat:
        stacked = jax.tree.map(lambda p: p[None], params)
        a = jax.grad(lambda p: nn.repeat(plain, 1).apply(p, x).sum())(stacked)
        b = jax.grad(lambda p: nn.repeat(nn.remat(plain), 1).apply(p, x).sum())(stacked)
    else:
        a = jax.grad(lambda p: plain.apply(p, x).sum())(params)
        b = jax.grad(lambda p: nn.remat(plain).apply(p, x).sum())(params)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-13)


def test_remat_recomputes_in_the_backward_pass():
    model = nn.remat(nn.serial(nn.Dense(4), nn.tanh))
    params = model.init(KEY, jnp.zeros((1, 4)))
    jaxpr = jax.make_jaxpr(jax.grad(lambda p: model.apply(p, jnp.ones((1, 4))).sum()))(params)
    assert "checkpoint" in str(jaxpr) or "remat" in str(jaxpr)


def test_parallel_sums_or_concatenates():
    a, b = nn.Dense(2, name="a"), nn.Dense(2, name="b")
    x = jnp.ones((1, 3))
    params = nn.parallel(a, b).init(KEY, x)
    total = nn.parallel(a, b).apply(params, x)
    np.testing.assert_allclose(total, a.apply(params["a"], x) + b.apply(params["b"], x), rtol=1e-6)
    assert nn.parallel(a, b, combine="concat").apply(params, x).shape == (1, 4)


def test_parallel_sum_needs_equal_shapes():
    with pytest.raises(errors.ShapeError, match="cannot sum"):
        nn.parallel(nn.Dense(2), nn.Dense(3)).init(KEY, jnp.zeros((1, 3)))


def test_residual_adds_the_input():
    block = nn.residual(nn.Dense(3))
    x = jnp.ones((2, 3))
    params = block.init(KEY, x)
    np.testing.assert_allclose(block.apply(params, x), x + nn.Dense(3).apply(params["dense_0"], x))


def test_residual_needs_matching_shapes():
    with pytest.raises(errors.ShapeError, match="residual"):
        nn.residual(nn.Dense(2)).init(KEY, jnp.zeros((1, 3)))


def test_non_layer_argument_is_refused():
    with pytest.raises(
        TypeError,
        match=r"argument 1 is .*not a funcgrad Layer; wrap a function with nn.elementwise",
    ):
        nn.serial(nn.Dense(2), jnp.tanh)


def test_batchnorm_state_threads_through_repeat():
    model = nn.repeat(nn.serial(nn.Dense(3), nn.BatchNorm()), 2)
    x = jax.random.normal(KEY, (8, 3))
    params, state = model.init_with_state(KEY, x)
    assert state["batch_norm_1"]["mean"].shape == (2, 3)
    _, new_state = model.apply(params, x, state=state, train=True)
    assert not np.allclose(new_state["batch_norm_1"]["mean"], 0)


def test_remat_is_asked_for_one_way_and_the_others_warn():
    x = jnp.ones((2, 4))
    block = nn.serial(nn.Dense(4), nn.tanh)
    with pytest.deprecated_call(match=r"repeat\(nn.remat\(layer\), n\)"):
        old = nn.repeat(block, 2, remat=True)
    assert old == nn.repeat(nn.remat(block), 2)
    with pytest.deprecated_call(match=r"nn.remat\(layer\) for layer in layers"):
        old = nn.serial(block, nn.relu, remat=True)
    assert old == nn.serial(nn.remat(block), nn.remat(nn.relu))
    params = old.init(KEY, x)
    assert sorted(params) == ["serial_0"]
