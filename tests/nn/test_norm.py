import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcgrad import errors, nn


@pytest.mark.x64
def test_layer_norm_normalises_the_last_axis():
    x = jax.random.normal(jax.random.key(0), (4, 8), jnp.float64) * 3 + 1
    ln = nn.LayerNorm(epsilon=0.0)
    y = ln.apply({"scale": jnp.ones(8), "bias": jnp.zeros(8)}, x)
    np.testing.assert_allclose(jnp.mean(y, -1), 0, atol=1e-12)
    np.testing.assert_allclose(jnp.var(y, -1), 1, rtol=1e-12)


def test_rms_norm_divides_by_root_mean_square():
    x = jnp.array([[3.0, 4.0]])
    y = nn.RMSNorm(epsilon=0.0).apply({"scale": jnp.ones(2)}, x)
    np.testing.assert_allclose(y, x / jnp.sqrt(12.5), rtol=1e-6)


def test_batch_norm_training_updates_state_and_eval_uses_it():
    model = nn.serial(nn.Dense(3), nn.BatchNorm(momentum=0.5))
    x = jax.random.normal(jax.random.key(0), (16, 2), jnp.float64) + 4
    params, state = model.init_with_state(jax.random.key(1), x)
    y, new_state = model.apply(params, x, state=state, train=True)
    np.testing.assert_allclose(jnp.mean(y, 0), 0, atol=1e-5)
    h = nn.Dense(3).apply(params["dense_0"], x)
    np.testing.assert_allclose(new_state["batch_norm_1"]["mean"], 0.5 * jnp.mean(h, 0), rtol=1e-5)
    y_eval, same = model.apply(params, x, state=new_state)
    assert same is new_state["batch_norm_1"] or jax.tree.all(
        jax.tree.map(lambda a, b: bool(jnp.all(a == b)), same, new_state)
    )
    bn = new_state["batch_norm_1"]
    expected = (h - bn["mean"]) / jnp.sqrt(bn["var"] + 1e-5)
    np.testing.assert_allclose(y_eval, expected, rtol=1e-5)


def test_batch_norm_without_state_says_how_to_get_it():
    model = nn.serial(nn.BatchNorm())
    params = model.init(jax.random.key(0), jnp.zeros((2, 3)))
    with pytest.raises(errors.ParamsError, match=r"BatchNorm at batch_norm_0: .*init_with_state"):
        model.apply(params, jnp.zeros((2, 3)))


def test_init_state_alone():
    state = nn.serial(nn.Dense(2), nn.BatchNorm()).init_state(jnp.zeros((1, 5)))
    np.testing.assert_array_equal(state["batch_norm_1"]["var"], jnp.ones(2))


@pytest.mark.x64
def test_group_norm_normalises_each_group_of_each_example():
    x = jax.random.normal(jax.random.key(0), (2, 3, 3, 6), jnp.float64) * 4 + 2
    y = nn.GroupNorm(3, epsilon=0.0, use_scale=False, use_bias=False)(x)
    groups = y.reshape(2, 9, 3, 2)
    np.testing.assert_allclose(jnp.mean(groups, axis=(1, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(jnp.var(groups, axis=(1, 3)), 1, rtol=1e-12)


@pytest.mark.x64
def test_group_size_and_instance_norm_are_group_norm():
    x = jax.random.normal(jax.random.key(1), (2, 4, 6), jnp.float64)
    params = {"scale": jnp.arange(6.0), "bias": jnp.ones(6)}
    np.testing.assert_array_equal(
        nn.GroupNorm(group_size=2).apply(params, x), nn.GroupNorm(3).apply(params, x)
    )
    np.testing.assert_array_equal(
        nn.InstanceNorm().apply(params, x), nn.GroupNorm(6).apply(params, x)
    )
    per_channel = (x - x.mean(1, keepdims=True)) / jnp.sqrt(x.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(
        nn.InstanceNorm().apply(params, x), per_channel * params["scale"] + 1
    )


def test_group_norm_bad_settings_and_inputs():
    with pytest.raises(errors.ConfigError, match="GroupNorm: give exactly one"):
        nn.GroupNorm(2, group_size=2)
    with pytest.raises(errors.ConfigError, match="GroupNorm: num_groups must be a positive int"):
        nn.GroupNorm(0)
    with pytest.raises(errors.ShapeError, match=r"GroupNorm at \(top\): 5 channels .* 2 groups"):
        nn.GroupNorm(2).init(jax.random.key(0), jnp.zeros((1, 3, 5)))
    with pytest.raises(errors.ShapeError, match=r"InstanceNorm at \(top\): expected input of rank"):
        nn.InstanceNorm().init(jax.random.key(0), jnp.zeros((1, 5)))
