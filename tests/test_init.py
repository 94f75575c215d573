"""``init`` draws every parameter of a model with one compiled program (issue 14, item 12): the
same values as each initializer called on its own, one compilation, any input spec."""

import jax
import jax.numpy as jnp
import numpy as np

from funcgrad import nn
from funcgrad.nn.layer import path_key

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def cnn(width: int) -> nn.Layer:
    return nn.serial(
        nn.Conv(width, (3, 3)), nn.relu, nn.max_pool((2, 2)),
        nn.Conv(width + 1, (3, 3)), nn.relu, nn.Flatten(), nn.Dense(13), nn.relu, nn.Dense(3),
    )  # fmt: skip


def eager_params(layer: nn.ParamLayer, path: tuple[str, ...], key: jax.Array, x) -> dict:
    """What ParamLayer's initialisation means: each spec's initializer, keyed by path and index."""
    specs = layer.param_specs(x, path)
    base = path_key(key, path)
    return {
        n: s.init(jax.random.fold_in(base, i), s.shape, s.dtype)
        for i, (n, s) in enumerate(sorted(specs.items()))
    }


def test_values_are_each_initializers_own_to_the_bit():
    model, key = cnn(4), jax.random.key(7)
    x = jax.ShapeDtypeStruct((2, 10, 10, 3), jnp.float64)
    params = model.init(key, x)
    specs = {"conv_0": x, "conv_3": jax.ShapeDtypeStruct((2, 5, 5, 4), jnp.float64)}
    specs["dense_6"] = jax.ShapeDtypeStruct((2, 5 * 5 * 5), jnp.float64)
    specs["dense_8"] = jax.ShapeDtypeStruct((2, 13), jnp.float64)
    for name, spec in specs.items():
        layer = model.layers[int(name.rsplit("_", 1)[1])]
        expected = eager_params(layer, (name,), key, spec)
        for leaf, want in expected.items():
            np.testing.assert_array_equal(params[name][leaf], want, err_msg=f"{name}/{leaf}")


def test_same_key_same_values_other_key_other_values_array_or_spec():
    model = cnn(5)
    x = jnp.ones((1, 8, 8, 2), jnp.float32)
    a = model.init(jax.random.key(1), x)
    b = model.init(jax.random.key(1), jax.ShapeDtypeStruct(x.shape, x.dtype))
    c = model.init(jax.random.key(2), x)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.array_equal(a["dense_6"]["w"], c["dense_6"]["w"])


def test_a_model_compiles_once_not_once_per_parameter_shape():
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **kw: compiles.append(event) if event == COMPILE_EVENT else None
    )
    model = cnn(6)  # widths no other test uses: nothing is cached yet
    x = jax.ShapeDtypeStruct((1, 9, 9, 5), jnp.float32)
    model.init(jax.random.key(0), x)
    first = compiles.count(COMPILE_EVENT)
    model.init(jax.random.key(1), x)
    assert first == 1, f"the first init compiled {first} programs"
    assert compiles.count(COMPILE_EVENT) == first, "the second init compiled again"


def test_init_inside_jit_and_vmap_and_with_an_unhashable_layer():
    model = nn.Dense(3)
    x = jnp.zeros((1, 2))
    keys = jax.random.split(jax.random.key(0), 4)
    stacked = jax.vmap(lambda k: model.init(k, x))(keys)
    np.testing.assert_array_equal(stacked["w"][2], model.init(keys[2], x)["w"])
    jitted = jax.jit(lambda k: model.init(k, x))(keys[1])
    np.testing.assert_array_equal(jitted["w"], model.init(keys[1], x)["w"])
    conv = nn.Conv(2, [3, 3])  # a list: not hashable, so not cached, still initialised
    assert conv.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))["w"].shape == (3, 3, 1, 2)
