"""remat on serial and repeat (less memory, same numbers) and the one-line mixed-precision policy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcgrad import inspect, nn
from funcgrad.errors import ConfigError


def mlp(depth, **kwargs):
    return nn.serial(*[nn.serial(nn.Dense(64), nn.tanh) for _ in range(depth)], **kwargs)


def grads_and_temp(model, x):
    params = model.init(jax.random.key(0), x)
    loss = lambda p: jnp.sum(model.apply(p, x) ** 2)
    return params, jax.grad(loss)(params), inspect.cost(jax.grad(loss), params).temp_bytes


def test_serial_remat_keeps_keys_and_gradients():
    x = jax.random.normal(jax.random.key(1), (32, 64))
    plain, g0, _ = grads_and_temp(mlp(4), x)
    rem, g1, _ = grads_and_temp(mlp(4, remat=True), x)
    assert jax.tree.structure(plain) == jax.tree.structure(rem)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    _, g2, _ = grads_and_temp(mlp(4, remat=policy), x)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_repeat_with_remat_stores_less_and_computes_the_same():
    x = jax.random.normal(jax.random.key(1), (512, 64), jnp.float32)
    block = nn.serial(nn.Dense(64, dtype=jnp.float32), nn.tanh)
    _, g0, t0 = grads_and_temp(nn.repeat(block, 16), x)
    _, g1, t1 = grads_and_temp(nn.repeat(block, 16, remat=True), x)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert t1 <= t0 / 2, (t0, t1)


def test_remat_settings_are_checked():
    with pytest.raises(
        ConfigError, match="serial: remat must be True, False or a jax.checkpoint_policies"
    ):
        nn.serial(nn.Dense(2), remat="yes")
    with pytest.raises(ConfigError, match="repeat: remat must be"):
        nn.repeat(nn.Dense(2), 3, remat=1.5)


def test_mixed_precision_computes_in_bf16_and_keeps_float32_outside():
    base = nn.serial(nn.Dense(32), nn.relu, nn.LayerNorm(), nn.Dense(10))
    model = nn.mixed_precision(base)
    x = jax.random.normal(jax.random.key(1), (8, 16), jnp.float32)
    params = model.init(jax.random.key(0), x)
    assert jax.tree.structure(params) == jax.tree.structure(base.init(jax.random.key(0), x))
    assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    loss = lambda p: jnp.mean(model.apply(p, x) ** 2)
    assert model.apply(params, x).dtype == jnp.float32
    assert loss(params).dtype == jnp.float32
    grads = jax.grad(loss)(params)
    assert {a.dtype for a in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
    # The matmuls run in bfloat16:
    g = inspect.graph(lambda p: model.apply(p, x), params)
    assert {n.outputs[0][:4] for n in g.find("dot_general")} == {"bf16"}
    # Close to the float32 model, at bfloat16's precision.
    np.testing.assert_allclose(model.apply(params, x), base.apply(params, x), rtol=0.05, atol=0.05)
    s = inspect.summary(model, params, x)
    assert s.rows[0].output == "f32[8,10]" and s.rows[1].output == "bf16[8,10]"


def test_mixed_precision_checks_its_dtypes():
    with pytest.raises(ConfigError, match="compute must be a floating dtype; got 'int8'"):
        nn.mixed_precision(nn.Dense(2), compute="int8")
    with pytest.raises(ConfigError, match="output must be a floating dtype"):
        nn.mixed_precision(nn.Dense(2), output="banana")
