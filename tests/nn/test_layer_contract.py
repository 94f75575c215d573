"""Every layer honours the Layer contract: shapes, deterministic init, gradients, jit, vmap, dtypes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcgrad as fg
from funcgrad import nn

KEY = jax.random.key(0)


def normal(*shape):
    # NumPy float64: float64 in the x64 tests, float32 in the others. Drawn by NumPy: JAX's
    # sampler compiled once per shape, 11 s of CPU to import this module.
    return np.random.default_rng(sum(shape)).standard_normal(shape)


# name -> (layer, example input, expected output shape)
CASES = {
    "dense": (nn.Dense(5), normal(3, 4), (3, 5)),
    "dense_no_bias": (nn.Dense(2, use_bias=False), normal(2, 3, 4), (2, 3, 2)),
    "scale": (nn.Scale(), normal(3, 4), (3, 4)),
    "scale_scalar": (nn.Scale(shape=()), normal(3, 4), (3, 4)),
    "conv1d": (nn.Conv(4, (3,)), normal(2, 9, 3), (2, 9, 4)),
    "conv2d_strided": (
        nn.Conv(4, (3, 3), strides=2, padding="VALID"),
        normal(2, 7, 7, 2),
        (2, 3, 3, 4),
    ),
    "conv2d_dilated_groups": (
        nn.Conv(4, (3, 3), dilation=2, groups=2, padding=((1, 1), (2, 2))),
        normal(1, 6, 6, 2),
        (1, 4, 6, 4),
    ),
    "conv3d": (nn.Conv(2, (2, 2, 2)), normal(1, 4, 4, 4, 1), (1, 4, 4, 4, 2)),
    "conv_transpose": (nn.ConvTranspose(3, (2, 2), strides=2), normal(1, 3, 3, 2), (1, 6, 6, 3)),
    "max_pool": (nn.max_pool((2, 2)), normal(2, 4, 4, 3), (2, 2, 2, 3)),
    "avg_pool_same": (nn.avg_pool((3,), strides=1, padding="SAME"), normal(2, 5, 3), (2, 5, 3)),
    "flatten": (nn.Flatten(), normal(2, 3, 4), (2, 12)),
    "reshape": (nn.Reshape((2, -1)), normal(3, 8), (3, 2, 4)),
    "dropout": (nn.Dropout(0.3), normal(4, 5), (4, 5)),
    "layer_norm": (nn.LayerNorm(), normal(3, 6), (3, 6)),
    "rms_norm": (nn.RMSNorm(), normal(3, 6), (3, 6)),
    "attention": (nn.MultiHeadAttention(2), normal(2, 4, 6), (2, 4, 6)),
    "attention_causal": (
        nn.MultiHeadAttention(3, qkv_features=6, out_features=5, causal=True),
        normal(1, 4, 6),
        (1, 4, 5),
    ),
    "group_norm": (nn.GroupNorm(2), normal(2, 3, 3, 4), (2, 3, 3, 4)),
    "instance_norm": (nn.InstanceNorm(), normal(2, 5, 3), (2, 5, 3)),
    "adaptive_avg_pool": (nn.adaptive_avg_pool((2, 3)), normal(2, 5, 7, 2), (2, 2, 3, 2)),
    "adaptive_max_pool": (nn.adaptive_max_pool(3), normal(2, 7, 2), (2, 3, 2)),
    "lstm": (nn.recurrent(nn.LSTMCell(3)), normal(2, 4, 3), (2, 4, 3)),
    "gru_reverse": (nn.recurrent(nn.GRUCell(3), reverse=True), normal(2, 4, 2), (2, 4, 3)),
    "bidirectional": (nn.bidirectional(nn.LSTMCell(2), nn.GRUCell(3)), normal(2, 3, 3), (2, 3, 5)),
    "attention_gqa_rope": (
        nn.MultiHeadAttention(4, num_kv_heads=2, rope=True, causal=True),
        normal(2, 5, 8),
        (2, 5, 8),
    ),
    "relu": (nn.relu, normal(3, 4), (3, 4)),
    "sigmoid": (nn.sigmoid, normal(3, 4), (3, 4)),
    "tanh": (nn.tanh, normal(3, 4), (3, 4)),
    "gelu": (nn.gelu, normal(3, 4), (3, 4)),
    "softplus": (nn.softplus, normal(3, 4), (3, 4)),
    "softmax": (nn.softmax, normal(3, 4), (3, 4)),
    "log_softmax": (nn.log_softmax, normal(3, 4), (3, 4)),
    "serial": (nn.serial(nn.Dense(4), nn.tanh, nn.Dense(2)), normal(3, 5), (3, 2)),
    "parallel_concat": (
        nn.parallel(nn.Dense(2), nn.Dense(3), combine="concat"),
        normal(3, 4),
        (3, 5),
    ),
    "residual": (nn.residual(nn.LayerNorm(), nn.Dense(4)), normal(3, 4), (3, 4)),
    "repeat": (nn.repeat(nn.serial(nn.Dense(4), nn.tanh), 3), normal(3, 4), (3, 4)),
    "remat": (nn.remat(nn.serial(nn.Dense(4), nn.gelu)), normal(3, 4), (3, 4)),
    "shared": (
        nn.serial(nn.shared(nn.Dense(4), "tied"), nn.tanh, nn.shared(nn.Dense(4), "tied")),
        normal(2, 4),
        (2, 4),
    ),
}
# Kinks (relu, max) make finite differences unreliable only on exact ties; random inputs avoid them.
NAMES = sorted(CASES)


# Every test of one case runs before the next case's (the module-scoped parametrization), and
# the tests share, per case, one draw of the parameters and one jitted ``apply`` (compiled once
# per input signature and mode): eager ``apply`` compiles every primitive on its own, and the
# parameters are drawn by a compiled program per case, which the 39 cases, one test after
# another, would evict from the library's 32-entry cache.
BY_CASE = pytest.mark.parametrize("name", NAMES, scope="module")


@functools.cache
def jitted_apply(name):
    return jax.jit(CASES[name][0].apply)


@functools.cache
def init32(name):
    """``layer.init(KEY, x)`` in 32-bit mode: float32 parameters."""
    layer, x, _ = CASES[name]
    with jax.enable_x64(False):
        return layer.init(KEY, x.astype(np.float32))


def widened(tree):
    """The leaves of ``tree`` as float64 JAX arrays, widened by NumPy and moved by device_put
    (``jnp.asarray`` compiles a conversion for each leaf shape)."""
    with jax.enable_x64(True):
        return jax.tree.map(lambda a: jax.device_put(np.asarray(a, np.float64)), tree)


@functools.cache
def init64(name):
    """Float64 parameters: `init32`'s, widened."""
    return widened(init32(name))


@BY_CASE
def test_output_shape(name):
    _, x, shape = CASES[name]
    assert jitted_apply(name)(init32(name), x).shape == shape


@BY_CASE
def test_init_is_deterministic_and_needs_no_data(name):
    layer, x, _ = CASES[name]
    a = layer.init(KEY, x)
    b = layer.init(KEY, jax.ShapeDtypeStruct(x.shape, x.dtype))
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(u, v)
    c = layer.init(jax.random.key(1), x)
    random_leaves = [
        (u, v)
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(c), strict=True)
        if np.std(np.asarray(u)) > 0  # NumPy's: jnp.std compiles per shape
    ]
    assert all(not np.array_equal(u, v) for u, v in random_leaves)


@BY_CASE
def test_gradients_match_finite_differences(name):
    _, x, _ = CASES[name]
    weights = normal(*jitted_apply(name)(init32(name), x).shape)
    # Through the jitted apply: check_grads runs the function once as it is (in float64),
    # besides its compiled checks, and test_jit_equals_eager then finds that apply compiled.
    apply = jitted_apply(name)
    # The float32 parameters and the input, widened to float64 as check_grads would.
    args = (init64(name), widened(x))
    fg.testing.check_grads(lambda p, v: jnp.sum(weights * apply(p, v)), args)


@pytest.mark.x64
@BY_CASE
def test_jit_equals_eager(name):
    layer, x, _ = CASES[name]
    params = init64(name)
    np.testing.assert_allclose(
        jitted_apply(name)(params, x), layer.apply(params, x), rtol=1e-12, atol=1e-12
    )


@pytest.mark.x64
@BY_CASE
def test_vmap_equals_a_loop(name):
    # Both sides compiled (jit equal to eager is the test above): the vmapped apply in one
    # program, the loop's single examples by the jitted apply of test_jit_equals_eager.
    layer, x, _ = CASES[name]
    params = init64(name)
    stacked = np.stack([x, 2 * x, -x])
    mapped = np.asarray(jax.jit(jax.vmap(layer.apply, in_axes=(None, 0)))(params, stacked))
    for i in range(3):
        np.testing.assert_allclose(
            mapped[i], jitted_apply(name)(params, stacked[i]), rtol=1e-12, atol=1e-12
        )


@BY_CASE
def test_float32_input_gives_float32_output(name):
    layer, x, _ = CASES[name]
    x32 = x.astype(jnp.float32)
    params = layer.init(KEY, x32)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    assert jitted_apply(name)(params, x32).dtype == jnp.float32


@pytest.mark.parametrize("name", ["dense", "conv2d_strided", "attention", "layer_norm", "scale"])
def test_bfloat16_compute_with_float32_params(name):
    layer, x, _ = CASES[name]
    layer = type(layer)(**{**layer.__dict__, "dtype": jnp.bfloat16})
    x32 = x.astype(jnp.float32)
    params = layer.init(KEY, x32)

    @jax.jit  # one program for the output and the gradients, not op by op
    def output_and_grads(p):
        loss = lambda q: jnp.sum(layer.apply(q, x32).astype(jnp.float32))
        return layer.apply(p, x32), jax.grad(loss)(p)

    y, grads = output_and_grads(params)
    assert y.dtype == jnp.bfloat16
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))


@BY_CASE
def test_mixed_precision_wraps_every_layer(name):
    # Whatever the layer (a residual, a shared layer, a norm, a repeat), the bf16 policy inits
    # with float32 parameters and returns float32 close to the float32 layer's result.
    layer, x, _ = CASES[name]
    x32 = x.astype(jnp.float32)
    model = nn.mixed_precision(layer)
    params = model.init(KEY, x32)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, init32(name))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    y = jax.jit(model.apply)(params, x32)
    assert y.dtype == jnp.float32
    reference = jitted_apply(name)(params, x32)
    scale = float(np.max(np.abs(reference))) + 1.0
    np.testing.assert_allclose(y, reference, rtol=0.05, atol=0.05 * scale)  # bf16: ~3 digits


def test_the_compiled_init_cache_is_bounded(monkeypatch):
    from funcgrad.nn import compiled_init as layer_module

    monkeypatch.setattr(layer_module, "INIT_CACHE_SIZE", 2)
    x = jnp.zeros((1, 3))
    for width in (101, 102, 103, 104):
        nn.Dense(width).init(jax.random.key(0), x)
        assert len(layer_module._INIT_CACHE) <= 2
    assert (nn.Dense(104), jax.ShapeDtypeStruct((1, 3), x.dtype)) == next(
        reversed(layer_module._INIT_CACHE)
    )[:2]
